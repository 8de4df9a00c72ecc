"""Streaming reader and writer for the safetensors format, one tensor at a time.

Why not ``safetensors.numpy``: ``save_file`` needs every tensor of a file in a
dict at once (the whole model in memory, twice with the transposed copies), a
transposed read needs a second full copy, and ``safe_open`` reports a truncated
file as "incomplete metadata, file not fully covered" without saying how much
is missing or which tensors. The format is small enough to own: an
8-byte little-endian header length, a JSON header ``{name: {dtype, shape,
data_offsets}}`` (offsets relative to the data section), then the raw
little-endian bytes of each tensor, contiguous and without holes. The header is
known before any data is read, so a writer can stream arrays in, and a reader
can validate the whole file (including truncation) before reading one byte of data.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
# A header above this is not a real safetensors file (transformers' limit is 100 MB).
_MAX_HEADER = 100 * 1024 * 1024
# Arrays are written and read in native order, which safetensors fixes as little-endian.
assert sys.byteorder == "little", "safetensors_io assumes a little-endian host"


class SafetensorsError(ValueError):
  """A safetensors file that is malformed or cut short; the message names the file."""


def dtype_name(dtype) -> str:
  try:
    return _NAMES[np.dtype(dtype)]
  except KeyError:
    raise SafetensorsError(f"dtype {dtype} has no safetensors equivalent.") from None


@dataclass(frozen=True)
class TensorInfo:
  name: str
  dtype: np.dtype
  shape: tuple[int, ...]
  begin: int  # offset in the data section
  end: int

  @property
  def nbytes(self) -> int:
    return self.end - self.begin


class SafetensorsReader:
  """Random access to the tensors of one file; nothing is read until asked.

  The header is checked on open: every tensor's byte range must match its
  shape and dtype, and must lie inside the file, so a truncated download fails
  here, naming the file, the bytes expected and the bytes present.
  """

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes, no header).")
      (n,) = struct.unpack("<Q", head)
      if n > _MAX_HEADER or 8 + n > size:
        raise SafetensorsError(
            f"{path}: truncated or not a safetensors file (header claims {n} bytes, the file "
            f"has {size}).")
      try:
        header = json.loads(f.read(n))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: unreadable safetensors header ({e}).") from e
    self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
    self._data_start = 8 + n
    data_size = size - self._data_start
    self.tensors: dict[str, TensorInfo] = {}
    needed = 0
    for name, meta in header.items():
      try:
        dtype = _DTYPES[meta["dtype"]]
        shape = tuple(int(d) for d in meta["shape"])
        begin, end = (int(x) for x in meta["data_offsets"])
      except (KeyError, TypeError, ValueError) as e:
        raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry "
                               f"{meta!r} ({type(e).__name__}: {e}).") from None
      if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or begin > end:
        raise SafetensorsError(f"{path}: tensor {name!r} of shape {shape} {meta['dtype']} "
                               f"does not fit its byte range [{begin}, {end}).")
      self.tensors[name] = TensorInfo(name, dtype, shape, begin, end)
      needed = max(needed, end)
    if needed > data_size:
      cut = [t.name for t in self.tensors.values() if t.end > data_size]
      raise SafetensorsError(
          f"{path}: truncated safetensors file: its tensors need {needed:,} bytes of data but "
          f"only {data_size:,} are present ({len(cut)} tensor(s) cut short, e.g. {cut[0]!r}); "
          "download or copy it again.")

  def keys(self) -> list[str]:
    return list(self.tensors)

  def read(self, name: str) -> np.ndarray:
    """One tensor as a fresh numpy array (no memory map, so nothing stays resident)."""
    info = self.tensors[name]
    with open(self.path, "rb") as f:
      f.seek(self._data_start + info.begin)
      out = np.empty(info.shape, info.dtype)
      view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")
      got = f.readinto(view) if out.size else 0
    if got != info.nbytes:
      raise SafetensorsError(f"{self.path}: tensor {name!r} was cut short ({got} of "
                             f"{info.nbytes} bytes); the file changed while reading?")
    return out


  def read_float32(self, name: str, transpose: bool = False,
                   block_bytes: int = 64 << 20) -> np.ndarray:
    """One tensor as float32, optionally transposed (2-D), read in row blocks straight
    into the result: memory is the result plus one block, never a second full copy."""
    info = self.tensors[name]
    if not transpose or len(info.shape) != 2:
      arr = self.read(name)
      return arr if arr.dtype == np.float32 else arr.astype(np.float32)
    rows, cols = info.shape
    out = np.empty((cols, rows), np.float32)
    row_bytes = cols * info.dtype.itemsize
    step = max(1, block_bytes // max(1, row_bytes))
    with open(self.path, "rb") as f:
      for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        block = np.empty((r1 - r0, cols), info.dtype)
        f.seek(self._data_start + info.begin + r0 * row_bytes)
        if f.readinto(memoryview(block.reshape(-1).view(np.uint8))) != block.nbytes:
          raise SafetensorsError(f"{self.path}: tensor {name!r} was cut short while reading.")
        out[:, r0:r1] = block.T
    return out


@dataclass(frozen=True)
class TensorPlan:
  """A tensor to write: its bytes come from ``produce()`` in C order, in pieces."""
  name: str
  dtype: np.dtype
  shape: tuple[int, ...]
  produce: Callable[[], Iterable[np.ndarray]]

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def write(path: str, plans: Sequence[TensorPlan], metadata: Mapping[str, str] | None = None
          ) -> None:
  """Writes a safetensors file whose tensors are produced one after another.

  The header comes first (shapes and dtypes are known up front); then each
  tensor's pieces are written as they are produced, so peak memory is the
  largest piece, not the file.
  """
  header: dict[str, object] = {}
  offset = 0
  for p in plans:
    header[p.name] = {"dtype": dtype_name(p.dtype), "shape": list(p.shape),
                      "data_offsets": [offset, offset + p.nbytes]}
    offset += p.nbytes
  if metadata:
    header["__metadata__"] = dict(metadata)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # data section 8-byte aligned, as safetensors writes it
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for p in plans:
      written = 0
      for piece in p.produce():
        piece = np.ascontiguousarray(piece, dtype=p.dtype)
        f.write(memoryview(piece.reshape(-1).view(np.uint8)))
        written += piece.nbytes
      if written != p.nbytes:
        raise SafetensorsError(f"{path}: tensor {p.name!r} produced {written} bytes, "
                               f"expected {p.nbytes}.")


def iter_row_blocks(array: np.ndarray, dtype, transpose: bool,
                    block_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
  """Pieces of ``array`` (or of its 2-D transpose) cast to ``dtype``, in C order.

  Transposing and casting block by block keeps the extra memory to one block
  instead of a full transposed copy of the largest array (the 250k x d embedding).
  """
  if array.ndim == 0:
    yield np.asarray(array, dtype)
    return
  src = array.T if transpose else array
  row_bytes = max(1, int(np.prod(src.shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
  step = max(1, block_bytes // row_bytes)
  for start in range(0, src.shape[0], step):
    yield np.ascontiguousarray(src[start:start + step], dtype=dtype)
