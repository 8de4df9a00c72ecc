"""Native T5X checkpoints (legacy msgpack + TensorStore, and orbax) as INITIAL_CHECKPOINT_PATH.

Why a reader of our own: T5X is not installable (its only release is empty),
orbax cannot read the legacy layout at all, and orbax's restore needs the exact
target tree, so a missing array surfaces as an opaque tree-structure error. The
faithful mT0 recipe starts from the legacy checkpoints
(``gs://t5-data/pretrained_models/t5x/mt5_{size}/checkpoint_1000000``) with
their Adafactor state and step, so this module reads both layouts directly
with TensorStore, one array at a time:

* **legacy** (T5X ``checkpoints.Checkpointer``, version 3): a msgpack file
  ``checkpoint_<step>/checkpoint`` = ``{'version': 3, 'optimizer': state_dict}``
  whose partitioned leaves are TensorStore zarr specs with paths relative to
  the checkpoint folder (``target.encoder.layers_0.attention.query.kernel``),
  unpartitioned leaves (the step, unused Adafactor slots) stored inline;
* **orbax** (T5X's ``OrbaxCheckpointManagerInterface``, and our own
  ``checkpoints.Checkpointer``): ``checkpoint_<step>/state/`` holding one zarr
  array per leaf named by its dotted path, either as folders or inside an
  OCDBT database (``manifest.ocdbt``), plus an optional msgpack aggregate file
  for leaves that were not written as arrays.

Paths may be local or ``gs://`` (TensorStore's GCS driver, only when Google
credentials are configured; otherwise a clear error and no network access).

``write_legacy`` writes the legacy layout, one array at a time: ``xmtf
import-hf`` uses it because an orbax save buffers the whole tree (measured ~3x
the model), while this layout streams and is what T5X itself restores.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
import tensorstore as ts
from flax import serialization

from xmtf_pipeline import params as params_lib
from xmtf_pipeline.checkpoints import CheckpointError
from xmtf_pipeline.network import T5Config

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"checkpoint_(\d+)")
_GCS = re.compile(r"gs://([^/]+)/?(.*)", re.DOTALL)
# Names the machine; "Google Compute Engine" on GCE and Cloud TPU VMs.
GCE_PRODUCT_FILE = "/sys/class/dmi/id/product_name"


class T5XCheckpointError(CheckpointError):
  """A T5X checkpoint that cannot be read or does not fit the model; the message says why."""


# --------------------------------------------------------------------------- locations


def gcs_credentials_available() -> bool:
  """Whether TensorStore's GCS driver will find Google credentials.

  Checked up front so that a machine without them fails at once with advice,
  instead of TensorStore probing the metadata server and timing out.
  """
  env = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
  if env:
    return os.path.isfile(env)
  config_dir = os.environ.get("CLOUDSDK_CONFIG", os.path.expanduser("~/.config/gcloud"))
  if os.path.isfile(os.path.join(config_dir, "application_default_credentials.json")):
    return True
  try:  # a GCE / Cloud TPU VM gets credentials from its metadata server
    with open(GCE_PRODUCT_FILE) as f:
      return "Google" in f.read()
  except OSError:
    return False


@dataclass(frozen=True)
class Location:
  """A folder, local or on GCS, addressed through TensorStore's key-value stores."""
  path: str  # absolute local path or gs://bucket/prefix, no trailing slash

  @classmethod
  def of(cls, path: str) -> Location:
    if path.startswith("gs://"):
      if not _GCS.fullmatch(path) or not _GCS.fullmatch(path)[1]:
        raise T5XCheckpointError(f"{path!r} is not a gs://bucket/path URL.")
      if not gcs_credentials_available():
        raise T5XCheckpointError(
            f"Reading {path} needs Google Cloud credentials and none were found: run "
            "`gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to "
            "a service-account key file; or copy the checkpoint locally first "
            f"(gsutil -m cp -r {path} /local/dir) and point at the copy.")
      return cls(path.rstrip("/"))
    return cls(os.path.abspath(path))

  @property
  def is_gcs(self) -> bool:
    return self.path.startswith("gs://")

  def join(self, *parts: str) -> Location:
    return Location("/".join([self.path, *[p.strip("/") for p in parts if p]]))

  @property
  def parent(self) -> Location:
    return Location(self.path.rsplit("/", 1)[0])

  @property
  def name(self) -> str:
    return self.path.rsplit("/", 1)[-1]

  def kvstore(self, relative: str = "") -> dict[str, Any]:
    """A TensorStore kvstore spec for ``relative`` under this folder."""
    if self.is_gcs:
      bucket, prefix = _GCS.fullmatch(self.path).groups()
      path = "/".join(p for p in (prefix.strip("/"), relative.strip("/")) if p)
      return {"driver": "gcs", "bucket": bucket, "path": path + ("/" if path else "")}
    return {"driver": "file", "path": os.path.join(self.path, relative.strip("/")).rstrip("/") + "/"}

  def read(self, relative: str) -> bytes | None:
    """A file's bytes, or None when it does not exist."""
    if not self.is_gcs:
      p = os.path.join(self.path, relative)
      if not os.path.isfile(p):
        return None
      with open(p, "rb") as f:
        return f.read()
    store = ts.KvStore.open(self.kvstore()).result()
    got = store.read(relative).result()
    return got.value if got.state == "value" else None

  def exists(self, relative: str) -> bool:
    if not self.is_gcs:
      return os.path.exists(os.path.join(self.path, relative))
    return self.read(relative) is not None


# --------------------------------------------------------------------------- reader


@dataclass
class Entry:
  """One leaf of a checkpoint: its shape and dtype now, its values on ``read()``."""
  name: str  # slash-joined tree path, e.g. target/encoder/encoder_norm/scale
  shape: tuple[int, ...]
  dtype: np.dtype
  _read: Callable[[tuple], np.ndarray] = field(repr=False)  # index -> values

  def read(self, index: tuple = ()) -> np.ndarray:
    """The whole array, or the block ``index`` (a tuple of slices) read on its own."""
    return np.asarray(self._read(tuple(index)))


@dataclass
class CheckpointReader:
  """The leaves of one checkpoint, read lazily (never the whole tree at once)."""
  path: str
  layout: str  # 't5x-legacy' or 'orbax'
  entries: dict[str, Entry]

  def shapes(self, prefix: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the leaves under ``prefix/`` keyed by the rest of their path."""
    cut = len(prefix) + 1
    return {n[cut:]: e.shape for n, e in self.entries.items() if n.startswith(prefix + "/")}

  def read(self, name: str) -> np.ndarray:
    return self.entries[name].read()

  @property
  def step(self) -> int | None:
    entry = self.entries.get("state/step")
    return None if entry is None else int(np.asarray(entry.read()).reshape(-1)[0])


def _ts_entry(name: str, spec: dict[str, Any]) -> Entry:
  """An Entry backed by a TensorStore spec; opening reads the array's metadata only."""
  try:
    store = ts.open(spec, open=True, read=True).result()
  except Exception as e:  # a missing or unreadable array folder
    raise T5XCheckpointError(f"array {name} cannot be opened ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); the checkpoint "
                             "is incomplete or damaged.") from e
  return Entry(name, tuple(store.shape), np.dtype(store.dtype.numpy_dtype),
               lambda index: (store[index] if index else store).read().result())


def _inline_entry(name: str, value: Any) -> Entry:
  arr = np.asarray(value)
  return Entry(name, tuple(arr.shape), arr.dtype, lambda index: arr[index] if index else arr)


def _is_ts_spec(x: Any) -> bool:
  return isinstance(x, dict) and "driver" in x and ("kvstore" in x or "path" in x)


def _flatten(tree: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
  """Nested dicts -> {slash/path: leaf}; TensorStore spec dicts are leaves."""
  out = {} if out is None else out
  if isinstance(tree, Mapping) and not _is_ts_spec(tree):
    for k, v in tree.items():
      _flatten(v, f"{prefix}/{k}" if prefix else str(k), out)
  elif tree is not None:
    out[prefix] = tree
  return out


def _legacy_entry(name: str, spec: dict[str, Any], ckpt: Location) -> Entry:
  """T5X's relative spec -> absolute (``_update_ts_path_from_relative_to_absolute``)."""
  spec = copy.deepcopy(spec)
  meta = spec.get("metadata") or {}
  if spec.get("dtype") == "uint16" or meta.get("dtype") == "<u2":
    raise T5XCheckpointError(
        f"{ckpt.path}: array {name} is stored as uint16 (T5X checkpoint version 2 bfloat16); "
        "re-save it with a T5X of version >= 3 first.")
  # Chunking and compression are whatever was written; let TensorStore read them.
  meta.pop("chunks", None)
  meta.pop("compressor", None)
  kv = spec.get("kvstore")
  relative = kv.get("path") if isinstance(kv, dict) and "path" in kv else spec.pop("path", None)
  if relative is None:
    raise T5XCheckpointError(f"{ckpt.path}: array {name} has a TensorStore spec without a "
                             f"path: {spec}")
  spec.pop("path", None)
  spec["kvstore"] = ckpt.kvstore(relative)
  return _ts_entry(name, spec)


def _read_msgpack(loc: Location, relative: str) -> dict[str, Any] | None:
  raw = loc.read(relative)
  if raw is None:
    return None
  if raw.startswith(b"model_checkpoint_path"):
    raise T5XCheckpointError(
        f"{loc.join(relative).path} is a TensorFlow (Mesh TensorFlow) checkpoint, not a native "
        "T5X one; convert it with T5X's checkpoint_importer first, or use the T5X copies under "
        "gs://t5-data/pretrained_models/t5x/.")
  try:
    return serialization.msgpack_restore(raw)
  except Exception as e:
    raise T5XCheckpointError(f"{loc.join(relative).path} is not a readable msgpack checkpoint "
                             f"({type(e).__name__}: {e}); truncated copy?") from e


def _open_legacy(ckpt: Location, contents: dict[str, Any]) -> CheckpointReader:
  version = contents.get("version", 0)
  if version < 2 or "optimizer" not in contents:
    raise T5XCheckpointError(f"{ckpt.path}/checkpoint: T5X checkpoint version {version} is not "
                             "supported (versions 2 and 3 are).")
  entries = {}
  for name, leaf in _flatten(contents["optimizer"]).items():
    if _is_ts_spec(leaf):
      entries[name] = _legacy_entry(name, leaf, ckpt)
    elif not isinstance(leaf, str):
      entries[name] = _inline_entry(name, leaf)
  return CheckpointReader(ckpt.path, "t5x-legacy", entries)


def _open_orbax(ckpt: Location) -> CheckpointReader:
  state = ckpt.join("state")
  base = state.kvstore()
  if state.exists("manifest.ocdbt"):
    base = {"driver": "ocdbt", "base": base}
  try:
    keys = ts.KvStore.open(base).result().list().result()
  except Exception as e:
    raise T5XCheckpointError(f"{state.path}: cannot list the orbax arrays ({type(e).__name__}: "
                             f"{e}).") from e
  entries: dict[str, Entry] = {}
  for key in sorted(k.decode() for k in keys):
    for marker, driver in (("/.zarray", "zarr"), ("/zarr.json", "zarr3")):
      if key.endswith(marker):
        stem = key[:-len(marker)]
        kvstore = ({**base, "path": stem + "/"} if base["driver"] == "ocdbt"
                   else state.kvstore(stem))
        name = stem.replace(".", "/")
        entries[name] = _ts_entry(name, {"driver": driver, "kvstore": kvstore})
  # Leaves orbax aggregated into a msgpack file instead of arrays (older orbax / T5X).
  for leaf_name, leaf in _flatten(_read_msgpack(state, "checkpoint") or {}).items():
    if leaf_name not in entries and not isinstance(leaf, str):
      entries[leaf_name] = _inline_entry(leaf_name, leaf)
  if not entries:
    raise T5XCheckpointError(f"{state.path} holds no arrays; not an orbax checkpoint item.")
  return CheckpointReader(ckpt.path, "orbax", entries)


def _latest_local_step(path: str) -> str | None:
  try:
    steps = [int(m[1]) for n in os.listdir(path) if (m := _STEP_DIR.fullmatch(n))
             and os.path.isdir(os.path.join(path, n))]
  except OSError:
    return None
  return os.path.join(path, f"checkpoint_{max(steps)}") if steps else None


def detect_layout(path: str) -> tuple[str, Location]:
  """('t5x-legacy' | 'orbax', checkpoint folder) for a checkpoint path.

  Accepts ``.../checkpoint_<step>``, the legacy ``.../checkpoint_<step>/checkpoint``
  file, or (local only) a MODEL_DIR, meaning its newest ``checkpoint_<step>``.
  """
  loc = Location.of(path)
  if not loc.is_gcs and not os.path.exists(loc.path):
    raise T5XCheckpointError(f"Checkpoint path {loc.path} does not exist.")
  if loc.name == "checkpoint" and (loc.is_gcs or os.path.isfile(loc.path)):
    loc = loc.parent
  if loc.exists("checkpoint"):
    return "t5x-legacy", loc
  if any(loc.exists(f) for f in ("state/_METADATA", "state/manifest.ocdbt", "state/checkpoint",
                                 "_CHECKPOINT_METADATA")):
    return "orbax", loc
  if not loc.is_gcs:
    latest = _latest_local_step(loc.path)
    if latest is not None:
      return detect_layout(latest)
  raise T5XCheckpointError(
      f"{loc.path} is not a T5X checkpoint: it has neither a legacy msgpack `checkpoint` file "
      "nor an orbax `state/` item (nor, locally, checkpoint_<step> folders). Point at "
      "MODEL_DIR/checkpoint_<step>.")


def open_checkpoint(path: str) -> CheckpointReader:
  layout, loc = detect_layout(path)
  if layout == "t5x-legacy":
    contents = _read_msgpack(loc, "checkpoint")
    if not isinstance(contents, dict) or "optimizer" not in contents:
      raise T5XCheckpointError(f"{loc.path}/checkpoint is msgpack but not a T5X checkpoint "
                               "(no {'version', 'optimizer'} record).")
    return _open_legacy(loc, contents)
  return _open_orbax(loc)


def is_own_orbax_checkpoint(path: str) -> bool:
  """Whether a local checkpoint folder was written by our ``checkpoints.Checkpointer``.

  Ours record StandardCheckpointHandler for ``state`` and a JSON ``dataset``
  item; anything else (legacy T5X, T5X's orbax manager) goes through this
  module's format-agnostic reader.
  """
  try:
    with open(os.path.join(path, "_CHECKPOINT_METADATA")) as f:
      handlers = json.load(f).get("item_handlers") or {}
  except (OSError, ValueError):
    return False
  return (str(handlers.get("state", "")).endswith("StandardCheckpointHandler")
          and str(handlers.get("dataset", "")).endswith("JsonCheckpointHandler"))


# --------------------------------------------------------------------------- restore


def is_placed(like: Any) -> bool:
  """A jax.Array, or a ShapeDtypeStruct that carries a sharding (an abstract target)."""
  return isinstance(like, (jax.Array, jax.ShapeDtypeStruct)) and getattr(
      like, "sharding", None) is not None


def place_like(value: np.ndarray, like: Any, name: str = "") -> Any:
  """``value`` with ``like``'s dtype, and on ``like``'s devices/sharding if it is a jax.Array."""
  value = np.asarray(value)
  shape = tuple(like.shape)
  if value.shape != shape:
    if value.size != int(np.prod(shape, dtype=np.int64)):
      raise T5XCheckpointError(f"{name}: shape {value.shape} cannot become {shape}.")
    value = value.reshape(shape)
  if value.dtype != like.dtype:
    value = value.astype(like.dtype)
  if is_placed(like):
    return jax.make_array_from_callback(shape, like.sharding, lambda idx: value[idx])
  return value


def place_entry(entry: Entry, like: Any) -> Any:
  """``entry`` laid out like ``like``; each device's block is read on its own.

  For a sharded target this never materialises the full array on the host
  (T5X reads only host-local chunks the same way); a block wanted by several
  devices (replication) is read once.
  """
  if not is_placed(like) or entry.shape != tuple(like.shape) or not entry.shape:
    return place_like(entry.read(), like, entry.name)
  blocks: dict[tuple, np.ndarray] = {}

  def block(index):
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in blocks:
      blocks[key] = np.asarray(entry.read(index), like.dtype)
    return blocks[key]

  return jax.make_array_from_callback(tuple(like.shape), like.sharding, block)


def _preview(names: list[str], n: int = 5) -> str:
  more = f" … and {len(names) - n} more" if len(names) > n else ""
  return ", ".join(names[:n]) + more


def state_from_reader(reader: CheckpointReader, config: T5Config, target: Any,
                      source: str | None = None, params_only: bool = False) -> dict[str, Any]:
  """The full train state (params, Adafactor state, step) shaped like ``target``.

  Checks everything before reading any data: the parameters against the model
  config (ParamMismatchError naming the first mismatch), then that every
  optimizer slot and the step exist with the shapes our Adafactor expects.
  ``params_only``: ``{'target': params, 'state': {'step': step}}``; the optimizer slots,
  whatever Adafactor settings (factoring, momentum) wrote them, are neither checked nor read.
  """
  source = source or f"T5X checkpoint {reader.path}"
  got_params = reader.shapes("target")
  if not got_params:
    raise T5XCheckpointError(f"{source} has no target/ parameters (layout {reader.layout}); "
                             "is this a train-state checkpoint?")
  params_lib.check_params({p: _Shaped(s) for p, s in got_params.items()}, config, source=source)
  want = params_lib.flatten(target)
  if params_only:
    want = {n: like for n, like in want.items() if n.startswith("target/") or n == "state/step"}
  missing = sorted(n for n in want if n not in reader.entries)
  if missing:
    raise T5XCheckpointError(
        f"{source} is missing {len(missing)} of the {len(want)} arrays of a train state: "
        f"{_preview(missing)}. A T5X checkpoint holds target/<param>, state/step and "
        "state/param_states/<param>/{v_row,v_col,v,m}; was it saved without optimizer state, "
        "or copied incompletely?")
  for name, like in want.items():
    got = reader.entries[name].shape
    if int(np.prod(got, dtype=np.int64)) != int(np.prod(like.shape, dtype=np.int64)):
      raise T5XCheckpointError(
          f"{source}: {name} has shape {got} but the optimizer expects {tuple(like.shape)} "
          "(another Adafactor configuration, e.g. factored=False or beta1 set?).")
  extra = sorted(n for n in reader.entries if n not in want and n.startswith("state/"))
  if extra and not params_only:
    log.warning("%s: ignoring %d optimizer arrays the model does not use: %s", source,
                len(extra), _preview(extra))
  out = {name: place_entry(reader.entries[name], like) for name, like in want.items()}
  return params_lib.unflatten(out)


def restore_state(path: str, config: T5Config, target: Any, params_only: bool = False,
                  source: str | None = None) -> dict[str, Any]:
  """A native T5X checkpoint as a train state (restore.restore_state's T5X formats): params,
  Adafactor state, step (``params_only``: params and step; see state_from_reader)."""
  reader = open_checkpoint(path)
  state = state_from_reader(reader, config, target, source or f"INITIAL_CHECKPOINT_PATH {path}",
                            params_only)
  what = "parameters" if params_only else "parameters, Adafactor state"
  print(f"Restored {reader.layout} checkpoint {reader.path}: {what} and "
        f"step {int(np.asarray(state['state']['step']))}.", flush=True)
  return state


# --------------------------------------------------------------------------- writer

LEGACY_VERSION = 3
_CHUNK_BYTES = 64 << 20  # T5X's _DESIRED_CHUNK_SIZE_BYTES


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
  """T5X's rule: the largest chunk within 64 MiB that divides the array evenly, found by
  stepping the currently largest dimension down through its divisors."""
  divisors = [[d for d in range(1, n + 1) if n % d == 0] for n in shape]
  target = max(1, _CHUNK_BYTES // itemsize)
  while int(np.prod([d[-1] for d in divisors], dtype=np.int64)) > target:
    largest = max(range(len(shape)), key=lambda i: divisors[i][-1])
    divisors[largest].pop()
  return [d[-1] for d in divisors]


def write_legacy(ckpt_dir: str, leaves: Iterable[tuple[str, np.ndarray]]) -> None:
  """Writes T5X's legacy layout (version 3), the one the public mT5 checkpoints use.

  Leaves arrive one at a time (slash paths such as ``target/encoder/...``,
  ``state/step``); each array is written to its gzip zarr folder before the next
  is asked for, so memory holds one array, never the model. Single-element
  leaves (the step, unused Adafactor slots) go inline into the msgpack, the
  others as relative TensorStore specs, as T5X's Checkpointer writes them; T5X
  itself, this module's reader and ``xmtf export-hf`` all read the result.
  """
  os.makedirs(ckpt_dir, exist_ok=True)
  optimizer: dict[str, Any] = {}
  for name, value in leaves:
    arr = np.asarray(value)
    *parents, last = name.split("/")
    node = optimizer
    for key in parents:
      node = node.setdefault(key, {})
    if arr.size <= 1:
      node[last] = arr
      continue
    relative = name.replace("/", ".")
    spec = {"driver": "zarr", "dtype": arr.dtype.name,
            "kvstore": {"driver": "file", "path": relative},
            "metadata": {"compressor": {"id": "gzip", "level": 1}, "shape": list(arr.shape),
                         "chunks": _chunk_shape(arr.shape, arr.dtype.itemsize)}}
    absolute = dict(spec, kvstore={"driver": "file", "path": os.path.join(ckpt_dir, relative)})
    store = ts.open(absolute, create=True).result()
    chunks = spec["metadata"]["chunks"]
    # One chunk at a time: TensorStore then buffers a chunk, not a copy of the whole array.
    for corner in itertools.product(*(range(0, n, c) for n, c in zip(arr.shape, chunks))):
      block = tuple(slice(i, i + c) for i, c in zip(corner, chunks))
      store[block].write(arr[block]).result()
    node[last] = spec
    del arr, value
  with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize({"version": LEGACY_VERSION, "optimizer": optimizer}))


@dataclass
class _Shaped:
  shape: tuple[int, ...]
