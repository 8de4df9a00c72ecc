"""Every repository path that code, gin files, scripts and docs name exists (no dangling references),
and every section they cite by title (`README "Layout"`, `docs/scale-out.md "Reproduce mT0-large"`)
is a heading of that file.

A path counts when it starts with one of the repository's own top-level folders (`docs/…`,
`gin/…`, `tasks/…`, …) and is written out in full: patterns (`gin/mt0/mt0_{small,base}_xp3.gin`,
`checkpoint_<step>`, `*.gin`, `gin/models/MODEL.gin`) and paths under a run's folders are not references to check.
"""

import pathlib
import re
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TOP = ("xmtf_pipeline", "tasks", "gin", "scripts", "tests", "docs", "bench", ".ci")
PATH = re.compile(r"(?<![\w./~$-])((?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w./-]*[\w/])")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]+")
SUFFIXES = (".py", ".gin", ".md", ".sh", ".cfg", ".toml", ".json", "")
CITATION = re.compile(r"""(README|(?:docs|tests|bench)/[\w./-]+\.md)[ ,]+["']([^"'\n]{3,60})["']""")
# Upstream's own paths that share a name with ours (`tasks/…` in t5x or promptsource), read in
# the reference doc, are not ours to check.
NOT_OURS = {"docs/mt0-reference.md"}


def tracked_files() -> list[pathlib.Path]:
  out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                       cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
  return [REPO / f for f in out if f.endswith(SUFFIXES[:-1]) or "/" not in f and "." not in f
          if (REPO / f).is_file() and f not in NOT_OURS]


def references(text: str) -> set[str]:
  found = set()
  for m in PATH.finditer(text):
    path, after = m[1], text[m.end():m.end() + 1]
    if (after in "{<*" or any(c in path for c in "{}<>*") or "..." in path
        or any(PLACEHOLDER.fullmatch(part.split(".")[0]) for part in path.split("/"))):
      continue  # a pattern (`gin/models/MODEL.gin`: MODEL stands for a name), not a path
    found.add(path.rstrip("./"))
  return found


def test_the_scanner_finds_paths_and_skips_patterns():
  text = ("see docs/training.md, `gin/mt0/mt0_{small,base}_xp3.gin`, tasks/data/xp3_sample/. "
          "and MODEL_DIR/checkpoint_<step> or gin/models/*.gin or gin/models/NAME.gin; "
          "~/tasks/x is not ours")
  assert references(text) == {"docs/training.md", "tasks/data/xp3_sample"}


def in_checkout(ref: str) -> str:
  """The wheel's `xmtf_pipeline/gin_files/…` is the checkout's `gin/…` (setup.cfg package_dir)."""
  installed = "xmtf_pipeline/gin_files"
  return "gin" + ref[len(installed):] if ref.split("/")[:2] == installed.split("/") else ref


def citations(text: str) -> set[tuple[str, str]]:
  """(file, title) of each `FILE "Section title"`: README alone is the top-level README.md."""
  return {("README.md" if m[1] == "README" else m[1], m[2]) for m in CITATION.finditer(text)}


def headings(path: pathlib.Path) -> set[str]:
  return {line.lstrip("#").strip().replace("`", "") for line in path.read_text().splitlines()
          if line.startswith("#")}


def test_the_scanner_finds_section_citations():
  text = 'see README "Layout" and docs/scale-out.md "Reproduce mT0-large"; README.md holds it'
  assert citations(text) == {("README.md", "Layout"), ("docs/scale-out.md", "Reproduce mT0-large")}


@pytest.mark.parametrize("path", tracked_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_named_repository_path_exists(path):
  missing = sorted(ref for ref in references(path.read_text(errors="replace"))
                   if not (REPO / in_checkout(ref)).exists())
  assert not missing, f"{path.relative_to(REPO)} names paths that do not exist: {missing}"
  cited = sorted(f"{doc} \"{title}\"" for doc, title in citations(path.read_text(errors="replace"))
                 if not (REPO / doc).is_file() or title not in headings(REPO / doc))
  assert not cited, f"{path.relative_to(REPO)} cites sections that are no heading: {cited}"
