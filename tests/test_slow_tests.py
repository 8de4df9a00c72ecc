"""conftest.SLOW names real tests: a renamed slow test would silently lose its `slow` mark."""

import ast
import pathlib

import conftest

TESTS = pathlib.Path(__file__).resolve().parent


def test_every_slow_entry_names_a_test_function():
  for entry in conftest.SLOW:
    filename, name = entry.split("::")
    tree = ast.parse((TESTS / filename).read_text())
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert name in names, f"conftest.SLOW: {entry} is not a test in tests/{filename}"
  assert len(set(conftest.SLOW)) == len(conftest.SLOW)
