"""The house's import rules, read from the source: no cycles, and no layer imports a higher one.

Every import counts, including the ones inside functions: a lazy import that closes a circle is
still a circle for a reader. Layers, from the foundation up (README "Layout"):

  tasks/                  SeqIO tasks and mixtures; never imports xmtf_pipeline
  model                   axes, layers, network, params, layer_stacking, fused_accumulation,
                          rounding
  engine                  losses, adafactor, schedules, models, trainer, partitioning, distributed,
                          input_pipeline, checkpoints, gin_config, flags, run_logging, decoding,
                          rank_classification, generation_metrics, tensorflow_import, run_lock,
                          sliced_update
  interop/                HF and T5X checkpoints, safetensors, any-format restore
  jobs                    train, evaluation, inference, eval_report, checkpoint_selection
  tools/                  bench, plan, data inspection, HLO audit, demo
  cli                     the ``xmtf`` command
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("xmtf_pipeline", "tasks")

MODEL = {"axes", "layers", "network", "params", "layer_stacking", "fused_accumulation",
         "rounding"}
ENGINE = {"losses", "adafactor", "schedules", "models", "trainer", "partitioning", "distributed",
          "input_pipeline", "checkpoints", "gin_config", "flags", "run_logging", "decoding",
          "rank_classification", "generation_metrics", "tensorflow_import", "run_lock",
          "sliced_update"}
JOBS = {"train", "evaluation", "inference", "eval_report", "checkpoint_selection"}
LAYERS = ("tasks", "model", "engine", "interop", "jobs", "tools", "cli")


def layer_of(module: str) -> str:
  parts = module.split(".")
  if parts[0] == "tasks":
    return "tasks"
  if len(parts) == 1:
    return "model"  # the package's __init__: imports nothing of ours
  if parts[1] in ("interop", "tools"):
    return parts[1]
  name = parts[1]
  for layer, names in (("model", MODEL), ("engine", ENGINE), ("jobs", JOBS)):
    if name in names:
      return layer
  if name == "cli":
    return "cli"
  raise AssertionError(f"{module} has no layer: add it to one in tests/test_imports.py (and to "
                       "the README's Layout) where its imports put it")


def our_modules() -> dict[str, pathlib.Path]:
  out = {}
  for package in PACKAGES:
    for path in (REPO / package).rglob("*.py"):
      parts = path.relative_to(REPO).with_suffix("").parts
      if "data" in parts:  # tasks/data: scripts that build the bundled data, not the library
        continue
      name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
      out[name] = path
  return out


def imports_of(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """Our modules that ``name`` imports anywhere in its source (top level or inside functions)."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  def ours(dotted: str) -> str | None:  # the longest of our modules the dotted name starts with
    while dotted and dotted not in modules:
      dotted = dotted.rpartition(".")[0]
    return dotted or None

  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(ours(a.name) for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # ``from pkg import mod`` imports pkg.mod; ``from mod import name`` imports mod
      found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else ours(base)
                   for a in node.names)
  return found - {None, name}


def import_graph() -> dict[str, set[str]]:
  modules = our_modules()
  return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  found = cycles(import_graph())
  assert not found, "import cycles among our modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_layer_imports_a_higher_one():
  rank = {layer: i for i, layer in enumerate(LAYERS)}
  upward = [f"{name} ({layer_of(name)}) imports {dep} ({layer_of(dep)})"
            for name, deps in import_graph().items() for dep in sorted(deps)
            if rank[layer_of(dep)] > rank[layer_of(name)]]
  assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_every_module_has_a_layer():
  for name in our_modules():
    layer_of(name)


@pytest.mark.parametrize("source", ["from xmtf_pipeline import train\n",
                                    "def f():\n  from xmtf_pipeline import train\n"])
def test_the_checks_catch_an_upward_import_top_level_or_lazy(tmp_path, source):
  """network importing train (which imports network) must fail both checks."""
  path = tmp_path / "network.py"
  path.write_text(source)
  deps = imports_of("xmtf_pipeline.network", path, our_modules())
  assert deps == {"xmtf_pipeline.train"}
  graph = import_graph()
  graph["xmtf_pipeline.network"] = deps
  assert any("xmtf_pipeline.network" in c and "xmtf_pipeline.train" in c for c in cycles(graph))
  assert LAYERS.index(layer_of("xmtf_pipeline.train")) > LAYERS.index("model")
