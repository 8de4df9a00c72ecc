"""Hugging Face MT5 weights -> our parameter tree, streaming, one tensor at a time.

Two consumers: ``xmtf import-hf`` (writes a native T5X checkpoint, one array
at a time) and INITIAL_CHECKPOINT_PATH pointing straight at an HF directory
(via ``restore.restore_state``). Both read the same way:
``config.json`` is validated first (MT5 / T5.1.1 gated-GELU with an untied
head only), then each weight file is opened and its tensors are converted and
shape-checked one after another (a transposed tensor is read in row blocks
straight into its transposed result), so a conversion holds one tensor, and a
restore the restored parameters plus one tensor, never the model twice.

Formats: ``model.safetensors`` and ``pytorch_model.bin``, single or sharded
with an ``*.index.json``. safetensors is read by ``safetensors_io`` (no torch
needed, transposes in row blocks, truncation detected from the header); ``.bin``
needs torch and is memory-mapped (``torch.load(mmap=True)``).

Starting from HF weights means starting Adafactor from zero accumulators at
step 0: HF checkpoints carry no optimizer state. This is *not* a continuation
of pretraining (β2 restarts at 0, the schedule at step 0); to continue T5X's
pretraining state, start from the native T5X checkpoint instead (t5x_import).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from xmtf_pipeline import params as params_lib
from xmtf_pipeline.interop import hf_mapping, safetensors_io
from xmtf_pipeline.interop.output_dir import finish_output_dir, prepare_output_dir
from xmtf_pipeline.network import T5Config
from xmtf_pipeline.params import ParamMismatchError

SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_ARCHITECTURES = ("MT5ForConditionalGeneration", "T5ForConditionalGeneration")
_EMBEDDING, _HEAD = "token_embedder/embedding", "decoder/logits_dense/kernel"
# (our T5Config field, config.json key, default when absent)
_CONFIG_FIELDS = (
    ("vocab_size", "vocab_size", None), ("emb_dim", "d_model", None),
    ("num_heads", "num_heads", None), ("head_dim", "d_kv", None), ("mlp_dim", "d_ff", None),
    ("num_encoder_layers", "num_layers", None), ("num_decoder_layers", "num_decoder_layers", None),
    ("relpos_num_buckets", "relative_attention_num_buckets", 32),
    ("relpos_max_distance", "relative_attention_max_distance", 128),
    ("layer_norm_epsilon", "layer_norm_epsilon", 1e-6),
)


class HFImportError(ValueError):
  """An HF directory that is not an importable MT5 checkpoint; the message says why."""


def is_hf_dir(path: str) -> bool:
  """A local folder with ``config.json`` and HF weight files (cheap: no reads)."""
  return (not path.startswith("gs://") and os.path.isfile(os.path.join(path, "config.json"))
          and any(os.path.isfile(os.path.join(path, f))
                  for f in (SAFE_SINGLE, SAFE_INDEX, BIN_SINGLE, BIN_INDEX)))


def read_config(hf_dir: str) -> dict[str, Any]:
  path = os.path.join(hf_dir, "config.json")
  try:
    with open(path) as f:
      cfg = json.load(f)
  except FileNotFoundError:
    raise HFImportError(f"{hf_dir} has no config.json; not a Hugging Face model directory.") from None
  except json.JSONDecodeError as e:
    raise HFImportError(f"{path} is not valid JSON ({e}).") from e
  if not isinstance(cfg, dict):
    raise HFImportError(f"{path} does not hold a JSON object.")
  return cfg


def t5_config_from_hf(cfg: dict[str, Any], source: str = "config.json") -> T5Config:
  """Our T5Config for an HF config, refusing every architecture our network is not.

  Accepted: ``model_type`` mt5, or t5 of the T5.1.1 kind (gated-GELU), which
  is the same network. Refused with the reason: other model types (BART, ...),
  T5 v1.0 (ReLU MLP), other activations, a d^-0.5 output rescale, models
  without a decoder. Whether the head is tied is decided by the weights.
  """
  model_type = cfg.get("model_type")
  arch = cfg.get("architectures") or []
  if model_type not in ("mt5", "t5"):
    raise HFImportError(
        f"{source}: model_type {model_type!r} ({', '.join(arch) or 'no architectures'}) is not "
        "an MT5 checkpoint; xmtf imports MT5ForConditionalGeneration (gated-GELU mT5 / T5.1.1 "
        "with an untied lm_head) only.")
  bad_arch = [a for a in arch if a not in _ARCHITECTURES]
  if bad_arch:
    raise HFImportError(f"{source}: architecture {bad_arch[0]} is not an encoder-decoder with an "
                        f"LM head; expected one of {', '.join(_ARCHITECTURES)}.")
  proj = cfg.get("feed_forward_proj", "gated-gelu" if model_type == "mt5" else "relu")
  if proj != "gated-gelu":
    raise HFImportError(
        f"{source}: feed_forward_proj {proj!r}; xmtf's network is gated-GELU (mT5, T5.1.1). "
        + ("This is the original T5 (v1.0: ReLU MLP, tied embeddings)." if proj == "relu" else ""))
  if cfg.get("scale_decoder_outputs"):
    raise HFImportError(
        f"{source}: scale_decoder_outputs is true: the decoder output is rescaled by "
        "d_model^-0.5 before the head (Mesh TF's tied-embedding T5); mT5/mT0 have no rescale.")
  # tie_word_embeddings is not trusted: transformers 5.x writes true for every MT5, even one
  # whose lm_head.weight is stored and distinct. The weights decide (see iter_params).
  if cfg.get("is_encoder_decoder") is False:
    raise HFImportError(f"{source}: is_encoder_decoder is false; expected an encoder-decoder.")
  values = {}
  for ours, key, default in _CONFIG_FIELDS:
    value = cfg.get(key, default)
    if key == "num_decoder_layers" and value is None:
      value = cfg.get("num_layers")  # HF: defaults to num_layers
    if value is None:
      raise HFImportError(f"{source}: missing {key!r}.")
    values[ours] = value
  try:
    return T5Config(**values, dtype="float32",
                    dropout_rate=float(cfg.get("dropout_rate", 0.0) or 0.0))
  except (TypeError, ValueError) as e:
    raise HFImportError(f"{source}: {e}") from e


def check_same_architecture(got: T5Config, want: T5Config, source: str) -> None:
  """Raises ParamMismatchError naming every architecture field that differs."""
  hf_name = {ours: key for ours, key, _ in _CONFIG_FIELDS}
  diffs = [f"{hf_name[f]}={getattr(got, f)} (model gin {f}={getattr(want, f)})"
           for f, _, _ in _CONFIG_FIELDS if getattr(got, f) != getattr(want, f)]
  if diffs:
    raise ParamMismatchError(
        f"{source}: config.json does not match the model config: {'; '.join(diffs)}. "
        "Choose the model gin of the same size (e.g. models/mt5_base.gin for google/mt5-base).")


@dataclass
class WeightFiles:
  format: str  # 'safetensors' or 'pytorch'
  files: list[str]  # absolute paths, in shard order
  index: dict[str, str] | None  # key -> file name, when sharded


def weight_files(hf_dir: str) -> WeightFiles:
  """The weight files, preferring safetensors (as transformers does)."""
  for fmt, single, index in (("safetensors", SAFE_SINGLE, SAFE_INDEX),
                             ("pytorch", BIN_SINGLE, BIN_INDEX)):
    if os.path.isfile(os.path.join(hf_dir, index)):
      path = os.path.join(hf_dir, index)
      try:
        with open(path) as f:
          weight_map = json.load(f)["weight_map"]
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise HFImportError(f"{path} is not a valid shard index ({type(e).__name__}: {e}).") from e
      names = list(dict.fromkeys(weight_map.values()))
      missing = [n for n in names if not os.path.isfile(os.path.join(hf_dir, n))]
      if missing:
        raise HFImportError(f"{path} lists shard(s) that are missing: {', '.join(missing)}.")
      return WeightFiles(fmt, [os.path.join(hf_dir, n) for n in names], dict(weight_map))
    if os.path.isfile(os.path.join(hf_dir, single)):
      return WeightFiles(fmt, [os.path.join(hf_dir, single)], None)
  raise HFImportError(f"{hf_dir} has no {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}.")


@dataclass
class SourceTensor:
  """One HF tensor before it is read: its shape, and a loader that returns it as a fresh
  float32 array, transposed or not, allocating only the result (no full-size temporary)."""
  key: str
  shape: tuple[int, ...]
  load: Callable[[bool], np.ndarray]


def _iter_safetensors(path: str, keys: list[str] | None) -> Iterator[SourceTensor]:
  try:
    reader = safetensors_io.SafetensorsReader(path)
  except safetensors_io.SafetensorsError as e:
    raise HFImportError(str(e)) from e
  for key in keys if keys is not None else reader.keys():
    if key not in reader.tensors:
      raise HFImportError(f"{path}: the shard index places {key!r} here but the file lacks it.")
    yield SourceTensor(key, reader.tensors[key].shape,
                       lambda transpose, key=key: reader.read_float32(key, transpose))


def _iter_torch(path: str, keys: list[str] | None) -> Iterator[SourceTensor]:
  try:
    import torch
  except ImportError:
    raise HFImportError(f"Reading {os.path.basename(path)} needs torch (pip install "
                        "torch==2.13.0); safetensors checkpoints need nothing extra.") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except RuntimeError as e:
    if "mmap" not in str(e):
      raise HFImportError(f"{path} cannot be read by torch.load ({e}); truncated?") from e
    # Pre-zip (legacy) serialization cannot be memory-mapped: the shard is read whole.
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise HFImportError(f"{path} cannot be read by torch.load ({type(e).__name__}: {e}); "
                        "truncated or not a PyTorch checkpoint?") from e
  if not isinstance(state, dict):
    raise HFImportError(f"{path} does not hold a state dict.")

  def load(tensor, transpose):
    src = tensor.t() if transpose else tensor
    out = np.empty(tuple(src.shape), np.float32)
    torch.from_numpy(out).copy_(src)  # transposes and casts off the memory map in one pass
    return out

  for key in keys if keys is not None else list(state):
    if key not in state:
      raise HFImportError(f"{path}: the shard index places {key!r} here but the file lacks it.")
    tensor = state.pop(key)  # dropped from the dict so each tensor is released after use
    yield SourceTensor(key, tuple(tensor.shape), lambda transpose, t=tensor: load(t, transpose))
    del tensor
  del state


def iter_hf_tensors(hf_dir: str) -> Iterator[SourceTensor]:
  """Every tensor of every weight file, one at a time, unread until loaded."""
  wf = weight_files(hf_dir)
  read = _iter_safetensors if wf.format == "safetensors" else _iter_torch
  for path in wf.files:
    keys = None
    if wf.index is not None:
      keys = [k for k, f in wf.index.items() if f == os.path.basename(path)]
    yield from read(path, keys)


def iter_params(hf_dir: str, config: T5Config) -> Iterator[tuple[str, np.ndarray]]:
  """(T5X path, float32 array) for each parameter, checked against ``config``.

  Every tensor must map to a parameter of this config with the right shape,
  no parameter may come twice, and none may be missing at the end. A tied
  head (no ``lm_head.weight``, or one equal to ``shared.weight``) is refused.
  """
  expected = params_lib.param_shapes(config)
  seen: set[str] = set()
  # A few rows of the embedding and of the head (as (vocab, d)): equal means tied.
  probes: dict[str, np.ndarray] = {}
  for source in iter_hf_tensors(hf_dir):
    key = source.key
    if key in hf_mapping.HF_EMBEDDING_ALIASES:
      continue
    try:
      path, transpose = hf_mapping.to_t5x_name(key)
    except hf_mapping.MappingError as e:
      raise HFImportError(f"{hf_dir}: {e}") from e
    if path not in expected:
      raise HFImportError(f"{hf_dir}: weight {key} maps to {path}, which the config "
                          "(config.json's num_layers / num_decoder_layers) does not have.")
    if path in seen:
      raise HFImportError(f"{hf_dir}: weight {key} appears twice.")
    shape = source.shape[::-1] if transpose else source.shape
    if shape != expected[path]:
      raise HFImportError(
          f"{hf_dir}: weight {key} has shape {source.shape}, but config.json implies "
          f"{expected[path][::-1] if transpose else expected[path]}; the weights do not match "
          "config.json.")
    seen.add(path)
    out = source.load(transpose)
    if path in (_EMBEDDING, _HEAD):
      rows = out.T if path == _HEAD else out
      probes[path] = np.concatenate([rows[:4], rows[-4:]])
      del rows  # no reference may outlive the yield: the next tensor would double memory
    yield path, out
    del out
  missing = sorted(set(expected) - seen)
  if _HEAD in missing or (len(probes) == 2 and np.array_equal(*probes.values())):
    raise HFImportError(
        f"{hf_dir}: the LM head is tied to the embedding ("
        + ("no lm_head.weight" if _HEAD in missing else "lm_head.weight equals shared.weight")
        + "). mT5/mT0 have an untied head; transformers 5.x drops lm_head.weight when an MT5 "
        "built from a config is saved. Export with lm_head.weight stored explicitly.")
  if missing:
    raise HFImportError(f"{hf_dir} is missing {len(missing)} weight(s), e.g. "
                        f"{hf_mapping.to_hf_name(missing[0])[0]} ({missing[0]}).")


def load(hf_dir: str, config: T5Config | None = None) -> tuple[T5Config, dict[str, np.ndarray]]:
  """(config, flat float32 params). With ``config``, config.json must describe the same model."""
  hf_config = t5_config_from_hf(read_config(hf_dir), os.path.join(hf_dir, "config.json"))
  if config is not None:
    check_same_architecture(hf_config, config, hf_dir)
  return hf_config, dict(iter_params(hf_dir, hf_config))


def restore_state(path: str, config: T5Config, target: Any, source: str | None = None,
                  params_only: bool = False) -> dict[str, Any]:
  """An HF directory as a train state shaped like ``target`` (restore.restore_state's HF format).

  Params come from the HF weights, one array at a time from the host to ``target``'s shardings;
  Adafactor starts from zero accumulators at step 0 (HF checkpoints have no optimizer state),
  shaped like ``target``'s; ``params_only``: the parameters and the step 0 only.
  """
  import jax
  import jax.numpy as jnp

  from xmtf_pipeline.interop.t5x_import import is_placed, place_like

  source = source or f"INITIAL_CHECKPOINT_PATH {path}"
  hf_config = t5_config_from_hf(read_config(path), os.path.join(path, "config.json"))
  check_same_architecture(hf_config, config, source)
  want = params_lib.flatten(target["target"])
  flat = {p: place_like(v, want[p], p) for p, v in iter_params(path, hf_config)}

  def zeros(like):
    if is_placed(like):
      return jnp.zeros(like.shape, like.dtype, device=like.sharding)
    return np.zeros(np.shape(like), np.asarray(like).dtype)

  if params_only:
    return {"target": params_lib.unflatten(flat),
            "state": {"step": zeros(target["state"]["step"])}}
  state = jax.tree_util.tree_map(zeros, target["state"])
  print(f"Initialized parameters from Hugging Face weights in {path}; Adafactor starts from "
        "zero accumulators at step 0 (HF checkpoints carry no optimizer state).", flush=True)
  return {"target": params_lib.unflatten(flat), "state": state}


TOKENIZER_FILES = ("spiece.model", "tokenizer_config.json")  # the model, its extra_ids


def _copy_tokenizer(hf_dir: str, out: str) -> None:
  """Keeps the SentencePiece model (and the extra ids its tokenizer_config.json declares) next
  to the checkpoint, so eval and export-hf find the same vocabulary again."""
  if not os.path.isfile(os.path.join(hf_dir, "spiece.model")):
    return
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(hf_dir, name)):
      shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out, name))


def write_model_gin(config: T5Config, path: str, header: str) -> None:
  """The architecture as operative-config bindings (what ``xmtf export-hf`` reads back)."""
  lines = [f"# {line}" for line in header.splitlines()]
  lines += ["", "MODEL_CONFIG = @network.T5Config()"]
  for name in ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers", "num_decoder_layers",
               "head_dim", "mlp_dim", "dropout_rate", "relpos_num_buckets",
               "relpos_max_distance", "layer_norm_epsilon"):
    lines.append(f"MODEL_CONFIG/network.T5Config.{name} = {getattr(config, name)!r}")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


IMPORT_SOURCE = "import_source.json"


def is_import_output(path: str) -> bool:
  """Whether ``path`` holds exactly what ``import_hf`` writes (nothing else)."""
  try:
    with open(os.path.join(path, IMPORT_SOURCE)) as f:
      step = int(json.load(f)["step"])
    names = set(os.listdir(path))
  except (OSError, ValueError, KeyError, TypeError):
    return False
  return (f"checkpoint_{step}" in names
          and names <= {f"checkpoint_{step}", "config.gin", *TOKENIZER_FILES, IMPORT_SOURCE})


def train_state_leaves(params: Iterator[tuple[str, np.ndarray]], step: int
                       ) -> Iterator[tuple[str, np.ndarray]]:
  """A train state's leaves, one parameter at a time: the parameter, then its zero
  Adafactor slots (our optimizer's factoring = T5X's), then the step."""
  from xmtf_pipeline.adafactor import SLOTS, Adafactor

  optimizer = Adafactor()
  for path, value in params:
    yield f"target/{path}", value
    slots = optimizer.init_param_state(value)
    del value
    for slot in SLOTS:
      yield f"state/param_states/{path}/{slot}", np.asarray(slots[slot])
  yield "state/step", np.asarray(step, np.int32)


def import_hf(hf_dir: str, output_dir: str, overwrite: bool = False,
              config: T5Config | None = None, step: int = 0) -> str:
  """``xmtf import-hf``: writes OUTPUT_DIR/checkpoint_<step> as a native T5X checkpoint.

  T5X's legacy layout (msgpack + TensorStore), because it can be written one
  array at a time: converting mt5-xxl holds one tensor in memory, where an
  orbax save would buffer the whole model (measured: ~3x the model). T5X reads
  it, and so does INITIAL_CHECKPOINT_PATH (``restore.restore_state``) and
  ``xmtf export-hf``; it is an initial checkpoint, not a MODEL_DIR to resume.
  It holds the parameters and a zero Adafactor state at ``step`` (default 0),
  plus ``config.gin`` with the architecture and ``spiece.model`` (with its
  ``tokenizer_config.json``) when the HF directory has one. Returns the checkpoint folder.
  """
  from xmtf_pipeline.interop import t5x_import

  hf_dir = os.path.abspath(hf_dir)
  if not os.path.isdir(hf_dir):
    raise HFImportError(f"--hf_dir {hf_dir} is not a directory.")
  hf_config = t5_config_from_hf(read_config(hf_dir), os.path.join(hf_dir, "config.json"))
  if config is not None:
    check_same_architecture(hf_config, config, hf_dir)
  tmp = prepare_output_dir(output_dir, overwrite, protect=hf_dir, is_ours=is_import_output,
                           what="import")
  try:
    t5x_import.write_legacy(os.path.join(tmp, f"checkpoint_{step}"),
                            train_state_leaves(iter_params(hf_dir, hf_config), step))
    write_model_gin(hf_config, os.path.join(tmp, "config.gin"),
                    f"Architecture of the Hugging Face checkpoint {hf_dir} (xmtf import-hf).\n"
                    f"Adafactor state: zero accumulators at step {step} (HF weights carry no "
                    "optimizer state).")
    _copy_tokenizer(hf_dir, tmp)
    with open(os.path.join(tmp, IMPORT_SOURCE), "w") as f:
      json.dump({"hf_dir": hf_dir, "config.json": read_config(hf_dir), "step": step,
                 "layout": "t5x-legacy"}, f, indent=2)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finish_output_dir(tmp, output_dir, is_import_output, "import")
  return os.path.join(os.path.abspath(output_dir), f"checkpoint_{step}")
