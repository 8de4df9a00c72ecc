"""Hugging Face MT5 weights -> our parameter tree, streaming, one tensor at a time.

Two consumers: ``xmtf import-hf`` (writes a native T5X checkpoint, one array
at a time) and INITIAL_CHECKPOINT_PATH pointing straight at an HF directory
(via ``checkpoint_formats.restore_initial``). Both read the same way:
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
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from xmtf_pipeline import params as params_lib
from xmtf_pipeline.interop import hf_mapping, safetensors_io
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


def restore_state(path: str, config: T5Config, target: Any) -> dict[str, Any]:
  """INITIAL_CHECKPOINT_PATH hook for an HF directory.

  Params come from the HF weights; Adafactor starts from zero accumulators at
  step 0 (HF checkpoints have no optimizer state), shaped like ``target``'s.
  """
  import jax
  import jax.numpy as jnp

  from xmtf_pipeline.interop.t5x_import import is_placed, place_like

  source = f"INITIAL_CHECKPOINT_PATH {path}"
  hf_config = t5_config_from_hf(read_config(path), os.path.join(path, "config.json"))
  check_same_architecture(hf_config, config, source)
  want = params_lib.flatten(target["target"])
  flat = {p: place_like(v, want[p], p) for p, v in iter_params(path, hf_config)}

  def zeros(like):
    if is_placed(like):
      return jnp.zeros(like.shape, like.dtype, device=like.sharding)
    return np.zeros(np.shape(like), np.asarray(like).dtype)

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


def _listing(path: str, limit: int = 12) -> str:
  names = sorted(os.listdir(path))
  shown = [n + ("/" if os.path.isdir(os.path.join(path, n)) else "") for n in names[:limit]]
  return ", ".join(shown) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


# --------------------------------------------------------------------------- output temporaries
#
# A conversion writes into a hidden sibling ``.<OUT>.tmp-<hex8>`` and renames it at the end. A
# kill -9 skips every cleanup, so the temporary records who made it in TEMP_MARKER (host, pid,
# the pid's start time and the boot id, to tell a dead owner from a recycled pid), and the next
# conversion to the same OUT removes the temporaries whose owner it can prove dead. Anything it
# cannot prove (no marker, a live pid, another host on a shared filesystem) is kept and named.
#
# finish_output_dir swaps with two renames, OUT -> ``<tmp>.old`` then tmp -> OUT, moving the
# marker into ``<tmp>.old`` between them. A kill between the renames leaves the earlier OUT only
# as ``<tmp>.old``: the next run puts it back where it was (never deletes it), so the folder is
# as before the interrupted run. After both renames, ``<tmp>.old`` is the earlier output the
# user asked --overwrite to replace (the replacement is in place): the next run finishes that
# deletion, saying so.

TEMP_MARKER = ".xmtf-temporary.json"
_MARKER_KIND = "xmtf output temporary"


def _temp_pattern(output_dir: str) -> re.Pattern:
  return re.compile(rf"\.{re.escape(os.path.basename(output_dir))}\.tmp-([0-9a-f]{{8}})(\.old)?")


def _boot_id() -> str | None:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
  """(state, start time in clock ticks since boot) of a Linux process; None elsewhere/gone."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], fields[19]
  except (OSError, IndexError):
    return None


def _write_marker(tmp: str, output_dir: str, what: str) -> None:
  stat = _proc_stat(os.getpid())
  with open(os.path.join(tmp, TEMP_MARKER), "w") as f:
    json.dump({"kind": _MARKER_KIND, "what": what, "output_dir": output_dir,
               "host": socket.gethostname(), "pid": os.getpid(),
               "start_time": stat[1] if stat else None, "boot_id": _boot_id(),
               "created": time.strftime("%Y-%m-%d %H:%M:%S %z")}, f)


def _read_marker(path: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(path, TEMP_MARKER)) as f:
      marker = json.load(f)
    if marker.get("kind") == _MARKER_KIND and isinstance(marker.get("pid"), int):
      return marker
  except (OSError, ValueError, AttributeError):
    pass
  return None


def _owner_state(marker: dict[str, Any]) -> str:
  """'dead' (provably: same host and its process is gone), 'alive', or 'other-host'."""
  if marker.get("host") != socket.gethostname():
    return "other-host"  # a shared filesystem: its pid says nothing here
  boot = _boot_id()
  if marker.get("boot_id") and boot and marker["boot_id"] != boot:
    return "dead"  # the machine rebooted since
  pid = marker["pid"]
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return "dead"
  except OSError:  # EPERM: someone else's live process
    pass
  stat = _proc_stat(pid)
  if stat is not None and (stat[0] in ("Z", "X") or (marker.get("start_time") is not None
                                                      and stat[1] != marker["start_time"])):
    return "dead"  # a killed process not yet reaped, or the pid reused by another process
  return "alive"


def _size(path: str) -> str:
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.lstat(os.path.join(root, name)).st_size
      except OSError:
        pass
  return f"{total / 1e6:.1f} MB" if total >= 100_000 else f"{total} bytes"


def _remove_old(old: str) -> None:
  """Deletes ``old`` with its marker last, so a kill mid-way still leaves it recognisable."""
  for name in os.listdir(old):
    if name != TEMP_MARKER:
      entry = os.path.join(old, name)
      if os.path.isdir(entry) and not os.path.islink(entry):
        shutil.rmtree(entry)
      else:
        os.unlink(entry)
  try:
    os.unlink(os.path.join(old, TEMP_MARKER))
  except FileNotFoundError:
    pass
  os.rmdir(old)


def clean_stale_temporaries(output_dir: str) -> list[str]:
  """Removes the temporaries of interrupted conversions to ``output_dir`` whose owner is provably
  dead, restores an earlier output that such a run had moved aside, and names (keeps) the rest.

  Returns the lines it printed (one per temporary). See the comment above TEMP_MARKER.
  """
  output_dir = os.path.abspath(output_dir)
  parent = os.path.dirname(output_dir)
  try:
    names = os.listdir(parent)
  except OSError:
    return []
  pattern = _temp_pattern(output_dir)
  groups: dict[str, dict[str, str]] = {}
  for name in sorted(names):
    m = pattern.fullmatch(name)
    if m and os.path.isdir(os.path.join(parent, name)) and \
        not os.path.islink(os.path.join(parent, name)):
      groups.setdefault(m[1], {})["old" if m[2] else "tmp"] = os.path.join(parent, name)
  lines: list[str] = []

  def say(line: str) -> None:  # as it goes: a failure half-way still reports what was done
    print(line)
    lines.append(line)

  for group in groups.values():
    tmp, old = group.get("tmp"), group.get("old")
    marker = (tmp and _read_marker(tmp)) or (old and _read_marker(old))
    if marker is None:
      for p in (tmp, old):
        if p:
          say(f"note: kept {p} ({_size(p)}): named like an xmtf temporary of {output_dir} but "
              f"without its {TEMP_MARKER}, so not provably ours; delete it if it is not needed.")
      continue
    owner = f"xmtf {marker.get('what', 'conversion')} (pid {marker['pid']} on {marker['host']})"
    state = _owner_state(marker)
    if state != "dead":
      why = ("is still running" if state == "alive" else
             "runs on another host, so whether it still runs cannot be told from here")
      for p in (tmp, old):
        if p:
          say(f"note: kept {p} ({_size(p)}): its {owner} {why}; delete it once that process "
              "has stopped.")
      continue
    if old:
      if not os.path.lexists(output_dir):  # killed between the renames: put the earlier back
        if os.path.lexists(os.path.join(old, TEMP_MARKER)):
          os.unlink(os.path.join(old, TEMP_MARKER))
        os.rename(old, output_dir)
        say(f"note: restored {output_dir} from {old}: an interrupted {owner} had moved the "
            "earlier output aside to replace it.")
      elif tmp is None:  # both renames done: the earlier output it had been told to replace
        size = _size(old)
        _remove_old(old)
        say(f"note: removed {old} ({size}): the earlier output that an interrupted {owner} "
            "had replaced with --overwrite.")
      else:
        say(f"note: kept {old} ({_size(old)}): an earlier output moved aside by an "
            f"interrupted {owner}, but {output_dir} exists again; move it back or delete it "
            "yourself.")
    if tmp:
      size = _size(tmp)
      shutil.rmtree(tmp)
      say(f"note: removed {tmp} ({size}): the unfinished output of an interrupted {owner}.")
  return lines


def discard_output_dir(tmp: str) -> None:
  """Removes a temporary from ``prepare_output_dir`` (a failed or refused conversion)."""
  shutil.rmtree(tmp, ignore_errors=True)


def prepare_output_dir(output_dir: str, overwrite: bool, protect: str | None = None,
                       is_ours: Callable[[str], bool] | None = None,
                       what: str = "output",
                       added_files: Callable[[str], list[str] | None] | None = None) -> str:
  """A fresh temporary sibling of ``output_dir``; refuses a non-empty one unless it is ours.

  ``--overwrite`` replaces only a folder ``is_ours`` recognises (an earlier
  ``what``, e.g. "export"): any other non-empty folder is refused even with
  it, listing what is there, so another run's checkpoints are never deleted.
  ``added_files`` names the files that keep a folder from being ours when it
  is otherwise an earlier ``what`` (None when it is not one), so that refusal
  can say so. Writing to a sibling and renaming at the end (``finish_output_dir``)
  means a failed conversion never leaves a half-written directory behind; the
  temporaries of killed ones are cleaned first (``clean_stale_temporaries``).
  The folder gets the permissions of the umask, like any ``mkdir``.
  """
  output_dir = os.path.abspath(output_dir)
  if protect is not None:
    src = os.path.abspath(protect)
    if os.path.commonpath([src, output_dir]) == output_dir:
      raise FileExistsError(f"Output directory {output_dir} contains the input {src}; "
                            "choose another output directory.")
  clean_stale_temporaries(output_dir)  # first: it may put an earlier output back in place
  if os.path.exists(output_dir):
    if not os.path.isdir(output_dir):
      raise FileExistsError(f"{output_dir} exists and is not a directory.")
    if os.listdir(output_dir):
      ours = is_ours is not None and is_ours(output_dir)
      if not ours:
        _refuse_foreign(output_dir, what, added_files)
      if not overwrite:
        raise FileExistsError(f"Output directory {output_dir} exists and is not empty: it holds "
                              f"an earlier {what}; pass --overwrite to replace it, or choose a "
                              "new directory.")
  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  while True:  # mkdir (not tempfile.mkdtemp, which makes it 0700) so the umask applies
    tmp = os.path.join(parent, f".{os.path.basename(output_dir)}.tmp-{uuid.uuid4().hex[:8]}")
    if os.path.lexists(f"{tmp}.old"):
      continue
    try:
      os.mkdir(tmp)
    except FileExistsError:
      continue
    try:
      _write_marker(tmp, output_dir, what)
    except BaseException:
      discard_output_dir(tmp)
      raise
    return tmp


def _refuse_foreign(output_dir: str, what: str,
                    added_files: Callable[[str], list[str] | None] | None,
                    during: bool = False) -> None:
  """Raises the one-line refusal for a non-empty ``output_dir`` that is not an earlier ``what``;
  ``during``: found so when the conversion finished (it was ours when it started)."""
  added = added_files(output_dir) if added_files is not None else None
  if added:
    shown = ", ".join(added[:12]) + (f", ... ({len(added)} files)" if len(added) > 12 else "")
    raise FileExistsError(
        f"Output directory {output_dir} holds an earlier {what} with other files added"
        + (" during the conversion" if during else "") + f" ({shown}); --overwrite replaces "
        f"only a plain earlier {what}, since it would delete those files too, so nothing was "
        "changed: move those files away or choose another directory.")
  if during:
    raise FileExistsError(
        f"Output directory {output_dir} changed during the conversion and is no longer an "
        f"earlier {what} (it has: {_listing(output_dir)}); nothing was replaced.")
  raise FileExistsError(
      f"Output directory {output_dir} exists and is not empty, and is not an earlier "
      f"{what} (it has: {_listing(output_dir)}); nothing was changed: choose a new or "
      "empty directory (--overwrite replaces only an earlier " + what + ").")


def finish_output_dir(tmp: str, output_dir: str, is_ours: Callable[[str], bool] | None = None,
                      what: str = "output",
                      added_files: Callable[[str], list[str] | None] | None = None) -> None:
  """Moves ``tmp`` to ``output_dir``, replacing an empty folder or an earlier ``what``.

  Checked again here: the folder may have changed while the conversion ran.
  The marker moves into ``<tmp>.old`` between the two renames, so a kill at
  any point leaves something the next run can put back or finish (see TEMP_MARKER).
  """
  output_dir = os.path.abspath(output_dir)
  marker = os.path.join(tmp, TEMP_MARKER)
  if os.path.exists(output_dir):
    if os.listdir(output_dir) and not (is_ours is not None and is_ours(output_dir)):
      discard_output_dir(tmp)
      _refuse_foreign(output_dir, what, added_files, during=True)
    old = f"{tmp}.old"
    os.rename(output_dir, old)
    os.rename(marker, os.path.join(old, TEMP_MARKER))
    os.rename(tmp, output_dir)
    _remove_old(old)
  else:
    os.unlink(marker)
    os.rename(tmp, output_dir)


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
  it, and so does INITIAL_CHECKPOINT_PATH (``checkpoint_formats.restore_initial``) and
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
