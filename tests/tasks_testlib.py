"""Helpers for the tasks/ tests: fixtures in xP3's real layouts, written under tmp dirs.

Not a test module (pytest collects ``test_*.py`` only). Importing it also makes ``tasks``
importable when the editable install predates the package (it sits next to ``xmtf_pipeline``).
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  try:
    import tasks  # noqa: F401
  except ModuleNotFoundError:
    sys.path.insert(0, str(ROOT))

from tasks import vocab  # noqa: E402

SAMPLE_SPM = str(vocab.SAMPLE_SPM)


def write_jsonl(path: Path, records: Iterable, raw: bool = False) -> Path:
  """One JSON object per line (``raw``: the items are already lines)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "wt", encoding="utf-8") as f:
    for r in records:
      f.write((r if raw else json.dumps(r, ensure_ascii=False)) + "\n")
  return path


def rows(lang: str, n: int, tag: str = "") -> list[dict]:
  """n distinct, easily identified records: inputs ``{lang}{tag} in {i}``."""
  return [{"inputs": f"{lang}{tag} in {i}", "targets": f"{lang} out {i}"} for i in range(n)]


def merged_root(tmp: Path, counts: Mapping[str, int]) -> Path:
  """``{tmp}/{lang}/merged_{lang}.jsonl`` with ``counts[lang]`` rows each."""
  for lang, n in counts.items():
    write_jsonl(tmp / lang / f"merged_{lang}.jsonl", rows(lang, n))
  return tmp


def prompt_root(tmp: Path, lang: str, files: Mapping[str, int]) -> Path:
  """Per-prompt files ``{tmp}/{lang}/{name}.jsonl`` (names like xp3_ag_news_None_train_x)."""
  for name, n in files.items():
    write_jsonl(tmp / lang / f"{name}.jsonl", rows(lang, n, tag=f"[{name}]"))
  return tmp


def use_tiny_vocab(monkeypatch) -> None:
  """Points the mT5 vocabulary at the checked-in tiny model (tests never touch GCS)."""
  monkeypatch.setenv(vocab.MT5_SPM_ENV, SAMPLE_SPM)


def texts(ds, key: str = "inputs") -> list[str]:
  """Decoded strings of a raw (source) dataset feature, in order."""
  return [x.decode() for x in ds.map(lambda ex: ex[key]).as_numpy_iterator()]


def pretokenized(ds, key: str = "inputs") -> list[str]:
  """``{key}_pretokenized`` strings of a Task dataset, in order."""
  return [x[f"{key}_pretokenized"].decode() for x in ds.as_numpy_iterator()]


def spm_with_sentinels(path: Path) -> str:
  """The sample model with mT5's layout: its 400 pieces, then 100 sentinel pieces in the file
  (<extra_id_99> = 400 ... <extra_id_0> = 499), as mT5's 250,000 + 100 = 250,100."""
  from sentencepiece import sentencepiece_model_pb2

  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(Path(SAMPLE_SPM).read_bytes())
  for i in reversed(range(100)):
    piece = proto.pieces.add()
    piece.piece, piece.score = f"<extra_id_{i}>", 0.0
    piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
  path.write_bytes(proto.SerializeToString())
  return str(path)
