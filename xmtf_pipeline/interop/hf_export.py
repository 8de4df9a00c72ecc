"""``xmtf export-hf``: a checkpoint -> a Hugging Face MT5 directory, streaming.

Most users end in the HF ecosystem (the released mT0 weights are HF
checkpoints), so an export must load with plain ``transformers`` and give our
logits. The output mirrors bigscience/mt0-*: ``config.json`` (MT5, gated-GELU,
``tie_word_embeddings: false``), ``model.safetensors`` (sharded with an index
above ``--max_shard_size``), ``generation_config.json``, ``spiece.model`` +
``tokenizer_config.json`` + ``special_tokens_map.json`` from the run's
SentencePiece model, and a ``README.md`` model card.

The head is written explicitly as ``lm_head.weight``: transformers 5.x ties
MT5's head when a model is built from a config, so ``save_pretrained`` of such
a model would silently drop it (reference doc §2.2). Weights are streamed: one
parameter is read from the checkpoint, transposed and cast block by block, and
appended to the safetensors file before the next is read, so host memory holds
one parameter at a time, never the model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from xmtf_pipeline import params as params_lib
from xmtf_pipeline.interop import hf_mapping, restore, run_config, safetensors_io
from xmtf_pipeline.interop.output_dir import (
  discard_output_dir,
  finish_output_dir,
  prepare_output_dir,
)
from xmtf_pipeline.interop.t5x_import import CheckpointReader
from xmtf_pipeline.network import T5Config

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
DEFAULT_MAX_SHARD_SIZE = "5GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# Run settings shown in the model card, in this order, when the run config has them.
_CARD_SETTINGS = (
    ("MIXTURE_OR_TASK_NAME", "training mixture / task"),
    ("TASK_FEATURE_LENGTHS", "feature lengths"), ("BATCH_SIZE", "batch size (sequences)"),
    ("TRAIN_STEPS", "TRAIN_STEPS (absolute)"), ("INITIAL_CHECKPOINT_PATH", "initial checkpoint"),
    ("LOSS_NORMALIZING_FACTOR", "loss normalizing factor"), ("Z_LOSS", "z-loss"),
    ("LABEL_SMOOTHING", "label smoothing"), ("DROPOUT_RATE", "dropout"), ("PACK", "packing"),
    ("NUM_MICROBATCHES", "microbatches"), ("RANDOM_SEED", "random seed"),
    ("schedules.create_learning_rate_scheduler.factors", "learning-rate schedule"),
    ("schedules.create_learning_rate_scheduler.base_learning_rate", "base learning rate"),
    ("adafactor.Adafactor.decay_rate", "Adafactor decay rate"),
    ("adafactor.Adafactor.step_offset", "Adafactor step offset"),
)
_DATASETS = {"xp3": "bigscience/xP3", "xp3mt": "bigscience/xP3mt", "p3": "bigscience/P3"}


_EXPORT_FILES = re.compile(
    r"config\.json|generation_config\.json|model\.safetensors|model\.safetensors\.index\.json|"
    r"model-\d{5}-of-\d{5}\.safetensors|spiece\.model|tokenizer_config\.json|"
    r"special_tokens_map\.json|README\.md")
_CARD_MARK = "exported with `xmtf export-hf`"


def is_export_output(path: str) -> bool:
  """Whether ``path`` holds an earlier ``export`` and nothing else: only the files
  export writes, with config.json and our model card among them."""
  try:
    names = os.listdir(path)
    with open(os.path.join(path, "README.md"), errors="replace") as f:
      card = f.read()
  except OSError:
    return False
  return ("config.json" in names and _CARD_MARK in card
          and all(_EXPORT_FILES.fullmatch(n) and os.path.isfile(os.path.join(path, n))
                  for n in names))


def export_added_files(path: str) -> list[str] | None:
  """The entries that keep ``path`` from being an earlier export when it otherwise is one
  (config.json and our model card): what the user added; None when it is no export at all."""
  try:
    names = sorted(os.listdir(path))
    with open(os.path.join(path, "README.md"), errors="replace") as f:
      card = f.read()
  except OSError:
    return None
  if "config.json" not in names or _CARD_MARK not in card:
    return None
  return [n + ("/" if os.path.isdir(os.path.join(path, n)) else "") for n in names
          if not (_EXPORT_FILES.fullmatch(n) and os.path.isfile(os.path.join(path, n)))]


class HFExportError(run_config.RunConfigError):
  """The checkpoint or its run cannot be exported as asked; the message says why."""


def parse_size(text: str | int) -> int:
  """'5GB' (decimal, like transformers), '500MiB' or a byte count -> bytes."""
  if isinstance(text, int):
    return text
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
  if not m:
    raise HFExportError(f"--max_shard_size {text!r}: use e.g. 5GB, 500MB or a byte count.")
  return int(float(m[1]) * _UNITS[m[2]])


def eval_lengths(model_dir: str, explicit: str | None) -> tuple[dict[str, int], str]:
  """(token limits the evaluation used, where they come from): an eval's ``results.json``
  beside the run (as find_eval_results looks for it), else the held-out suite's defaults."""
  dirs = ([explicit if os.path.isdir(explicit) else os.path.dirname(explicit)] if explicit else
          [os.path.join(model_dir, "eval_results"), os.path.join(model_dir, "eval"), model_dir])
  for d in dirs:
    path = os.path.join(d, "results.json")
    try:
      with open(path) as f:
        lengths = json.load(f)["meta"]["feature_lengths"]
      return {"inputs": int(lengths["inputs"]), "targets": int(lengths["targets"])}, path
    except (OSError, KeyError, TypeError, ValueError):
      continue
  from tasks import heldout

  return dict(heldout.EVAL_FEATURE_LENGTHS), "the held-out suite's defaults (tasks.heldout)"


def write_tokenizer(out: str, spm_path: str, extra_ids: int | None, vocab_size: int,
                    model_max_length: int = 2048) -> list[str]:
  """spiece.model, tokenizer_config.json, special_tokens_map.json; returns warnings."""
  import sentencepiece as spm
  from sentencepiece import sentencepiece_model_pb2

  if spm_path.startswith("gs://") or not os.path.isfile(spm_path):
    raise HFExportError(f"SentencePiece model {spm_path} is not a local file; copy it locally "
                        "and pass --spm_model PATH.")
  with open(spm_path, "rb") as f:
    blob = f.read()
  try:
    sp = spm.SentencePieceProcessor(model_proto=blob)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(blob)
  except Exception as e:
    raise HFExportError(f"{spm_path} is not a SentencePiece model ({e}).") from e
  ids = {"pad": sp.pad_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
  if ids != {"pad": 0, "eos": 1, "unk": 2}:
    raise HFExportError(f"{spm_path} has ids {ids}; mT5 models need pad 0, eos 1, unk 2.")
  pieces = sp.get_piece_size()
  warnings = []
  if extra_ids is None:
    has_sentinels = sp.piece_to_id("<extra_id_0>") != sp.unk_id()
    extra_ids = 0 if has_sentinels or pieces + 100 > vocab_size else 100
    if not has_sentinels and extra_ids == 0:  # said, not silent: eval would have assumed 100
      warnings.append(
          f"{spm_path} holds no <extra_id_*> sentinels and {pieces} pieces + mT5's 100 would "
          f"exceed the model's {vocab_size} embeddings: the tokenizer gets 0 extra ids. If the "
          "run used sentinels, pass the vocabulary it trained with (--spm_model PATH).")
  if pieces + extra_ids > vocab_size:
    raise HFExportError(f"{spm_path} has {pieces} pieces + {extra_ids} extra ids, more than the "
                        f"model's {vocab_size} embeddings: not this model's vocabulary.")
  shutil.copyfile(spm_path, os.path.join(out, "spiece.model"))
  tokens = {"eos_token": sp.id_to_piece(1), "pad_token": sp.id_to_piece(0),
            "unk_token": sp.id_to_piece(2)}
  with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "T5Tokenizer", **tokens, "extra_ids": extra_ids,
               "additional_special_tokens": None, "sp_model_kwargs": {},
               "model_max_length": model_max_length}, f, indent=2)
  with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
    json.dump(tokens, f, indent=2)
  if proto.trainer_spec.byte_fallback:
    warnings.append(
        "The SentencePiece model uses byte_fallback, which transformers' T5Tokenizer ignores: "
        "characters outside the vocabulary become <unk> in HF instead of byte pieces.")
  return warnings


# --------------------------------------------------------------------------- weights


def _hf_order(key: str) -> tuple:
  rank = 0 if key == "shared.weight" else 2 if key == "lm_head.weight" else 1
  return (rank, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)])


class _NonFinite(Exception):
  """An array holding NaN/Inf, found while streaming (turned into nonfinite_error outside)."""


def write_weights(reader: CheckpointReader, out: str, dtype: np.dtype, max_shard_size: int
                  ) -> list[str]:
  """model.safetensors (or shards + index), streamed; returns the files written.

  Each parameter is checked for NaN/Inf as it is read (the only read of it, so no second pass
  over the checkpoint): a diverged checkpoint is refused naming the first bad array and the
  last finite checkpoint, instead of becoming an HF model that outputs NaN. Only the parameters
  are checked: the optimizer state is not exported.
  """

  plans = []
  for path, shape in reader.shapes("target").items():
    key, transpose = hf_mapping.to_hf_name(path)
    name = f"target/{path}"

    def produce(name=name, transpose=transpose):
      try:
        value = np.asarray(reader.read(name))
      except Exception as e:  # TensorStore: a truncated or damaged array file
        raise restore.damaged(reader.path, e, name) from None
      if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
        raise _NonFinite(name)
      return safetensors_io.iter_row_blocks(value, dtype, transpose)

    plans.append(safetensors_io.TensorPlan(key, dtype, shape[::-1] if transpose else shape,
                                           produce))
  plans.sort(key=lambda p: _hf_order(p.name))
  shards: list[list[safetensors_io.TensorPlan]] = [[]]
  size = 0
  for p in plans:
    if shards[-1] and size + p.nbytes > max_shard_size:
      shards.append([])
      size = 0
    shards[-1].append(p)
    size += p.nbytes
  meta = {"format": "pt"}
  names = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
  try:
    for name, shard in zip(names, shards):
      safetensors_io.write(os.path.join(out, name), shard, meta)
  except _NonFinite as e:
    raise restore.nonfinite_error(reader.path, str(e), "use") from None
  if len(shards) == 1:
    return names
  index = {"metadata": {"total_size": sum(p.nbytes for p in plans)},
           "weight_map": {p.name: name for name, shard in zip(names, shards) for p in shard}}
  with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
    json.dump(index, f, indent=2)
  return [*names, "model.safetensors.index.json"]


# --------------------------------------------------------------------------- model card


def find_eval_results(model_dir: str, explicit: str | None) -> tuple[str | None, Any]:
  """(markdown results table, model-index list) from ``--eval_results`` or MODEL_DIR.

  A results directory (``--eval_results DIR``, else ``MODEL_DIR/eval_results``,
  ``MODEL_DIR/eval`` or MODEL_DIR itself) may hold ``results.md`` (a markdown
  table, copied verbatim) and ``model_index.yaml`` / ``model-index.yaml`` (the
  card's ``model-index`` block). ``--eval_results`` may also name either file.
  """
  import yaml

  if explicit and not os.path.exists(explicit):
    raise HFExportError(f"--eval_results {explicit} does not exist.")
  if explicit and os.path.isfile(explicit):
    candidates = [explicit]
  else:
    dirs = [explicit] if explicit else [os.path.join(model_dir, "eval_results"),
                                        os.path.join(model_dir, "eval"), model_dir]
    candidates = [os.path.join(d, n) for d in dirs
                  for n in ("results.md", "model_index.yaml", "model-index.yaml")]
  table = index = None
  for path in candidates:
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      text = f.read()
    if path.endswith(".md") and table is None:
      table = text.strip()
    elif path.endswith((".yaml", ".yml")) and index is None:
      try:
        data = yaml.safe_load(text)
      except yaml.YAMLError as e:
        raise HFExportError(f"{path} is not valid YAML ({e}).") from e
      index = data.get("model-index") if isinstance(data, dict) else data
      if not isinstance(index, list):
        raise HFExportError(f"{path} must hold a `model-index:` list (the HF model card form).")
  return table, index


def model_card(config: T5Config, run: Mapping[str, Any], checkpoint: str, step: int | None,
               dtype: str, n_params: int, eval_table: str | None, model_index: Any,
               notes: list[str], lengths: tuple[dict[str, int], str] | None = None) -> str:
  import yaml

  front: dict[str, Any] = {"license": "apache-2.0", "library_name": "transformers",
                           "pipeline_tag": "text2text-generation", "tags": ["mt5", "xmtf"]}
  task = str(run.get("MIXTURE_OR_TASK_NAME", ""))
  dataset = _DATASETS.get(task.split("_")[0].lower())
  if dataset:
    front["datasets"] = [dataset]
  if model_index:
    front["model-index"] = model_index
  lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
           f"# {os.path.basename(os.path.dirname(checkpoint)) or 'xmtf'} "
           f"({os.path.basename(checkpoint)})", "",
           "An mT5-architecture encoder-decoder (`MT5ForConditionalGeneration`) trained with "
           "xmtf-pipeline, a T5X-style reproduction of BigScience's "
           "[mT0](https://huggingface.co/bigscience/mt0-xxl) (mT5 finetuned on xP3), and "
           f"{_CARD_MARK}.", "",
           "## Model", "",
           "| setting | value |", "|---|---|",
           f"| parameters | {n_params:,} |",
           f"| d_model / d_ff / heads x d_kv | {config.emb_dim} / {config.mlp_dim} / "
           f"{config.num_heads} x {config.head_dim} |",
           f"| encoder / decoder layers | {config.num_encoder_layers} / "
           f"{config.num_decoder_layers} |",
           f"| vocabulary | {config.vocab_size:,} |",
           f"| weights dtype | {dtype} |",
           "| LM head | untied (`lm_head.weight` stored explicitly) |",
           f"| source checkpoint | `{checkpoint}` (step {step if step is not None else '?'}) |",
           ""]
  settings = [(label, run[key]) for key, label in _CARD_SETTINGS if key in run]
  if settings:
    lines += ["## Training configuration", "", "| setting | value |", "|---|---|"]
    lines += [f"| {label} | `{value!r}` |" for label, value in settings]
    lines.append("")
  if lengths:
    (limits, source), trained = lengths, run.get("TASK_FEATURE_LENGTHS")
    lines += ["## Sequence lengths", "",
              f"- Training: {trained!r} tokens (TASK_FEATURE_LENGTHS)." if trained else
              "- Training: not recorded (no TASK_FEATURE_LENGTHS in the run's config.gin).",
              f"- Evaluation: prompts truncated to {limits['inputs']} tokens from the right, "
              f"answer choices to {limits['targets']} (from {os.path.basename(source)}). "
              f"`tokenizer_config.json` sets `model_max_length` to {limits['inputs']}, so "
              "`tokenizer(text, truncation=True)` truncates as the evaluation did.", ""]
  if eval_table:
    lines += ["## Evaluation results", "", eval_table, ""]
  lines += ["## Usage", "", "```python",
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer", "",
            'tokenizer = AutoTokenizer.from_pretrained("PATH")',
            'model = AutoModelForSeq2SeqLM.from_pretrained("PATH")',
            'inputs = tokenizer("Translate to English: Je t\'aime.", return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0], "
            "skip_special_tokens=True))", "```", ""]
  if notes:
    lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
  return "\n".join(lines)


# --------------------------------------------------------------------------- export


def export(checkpoint_dir: str, output_dir: str, dtype: str = "float32", overwrite: bool = False,
           spm_model: str | None = None, extra_ids: int | None = None,
           model_config: T5Config | None = None,
           max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
           eval_results: str | None = None) -> str:
  """Writes the HF directory ``output_dir``; returns its path.

  The architecture comes from ``model_config``, else the run's
  ``MODEL_DIR/config.gin``, else the parameter shapes; it is checked against
  the checkpoint before anything is written.
  """
  if dtype not in DTYPES:
    raise HFExportError(f"--dtype {dtype!r}: choose float32 or bfloat16.")
  reader = restore.open_reader(checkpoint_dir)
  ckpt = reader.path
  model_dir = os.path.dirname(ckpt)
  run = run_config.read_run_config(model_dir)
  shapes = reader.shapes("target")
  trained = None if model_config else run_config.model_config_from_run(run)
  config = model_config or trained or run_config.infer_config(shapes)
  # HF's dropout_rate is the training setting (0.1 on the mT0 uploads), not an architecture one.
  dropout = trained.dropout_rate if trained else run.get("DROPOUT_RATE", 0.1)
  params_lib.check_params({p: _Shaped(s) for p, s in shapes.items()}, config,
                          source=f"checkpoint {ckpt}")
  spm_path, hinted_extra, spm_source = run_config.resolve_spm(spm_model, run, model_dir)
  max_bytes = parse_size(max_shard_size)
  eval_table, model_index = find_eval_results(model_dir, eval_results)
  lengths = eval_lengths(model_dir, eval_results)

  tmp = prepare_output_dir(output_dir, overwrite, protect=ckpt, is_ours=is_export_output,
                           what="export", added_files=export_added_files)
  try:
    notes = write_tokenizer(tmp, spm_path, extra_ids if extra_ids is not None else hinted_extra,
                            config.vocab_size, lengths[0]["inputs"])
    files = write_weights(reader, tmp, DTYPES[dtype], max_bytes)
    hf_config = dict(hf_mapping.hf_config_dict(config, dropout_rate=float(dropout)),
                     torch_dtype=dtype, dtype=dtype)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
      json.dump({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, f, indent=2)
    notes = [f"Tokenizer: SentencePiece model from {spm_source}.", *notes]
    if dtype == "bfloat16":
      notes.append("Weights were rounded to bfloat16; T5X trains and checkpoints in float32.")
    with open(os.path.join(tmp, "README.md"), "w") as f:
      f.write(model_card(config, run, ckpt, reader.step, dtype,
                         sum(int(np.prod(s)) for s in shapes.values()), eval_table,
                         model_index, notes, lengths))
  except BaseException:
    discard_output_dir(tmp)  # a refusal (NaN/Inf, a damaged array) leaves OUT as it was
    raise
  finish_output_dir(tmp, output_dir, is_export_output, "export", export_added_files)
  for note in notes[1:]:
    print(f"note: {note}")
  print(f"Exported {ckpt} (step {reader.step}) to {os.path.abspath(output_dir)}: "
        f"{', '.join(files)} ({dtype}), tokenizer from {spm_source}.")
  return os.path.abspath(output_dir)


class _Shaped:
  def __init__(self, shape):
    self.shape = tuple(shape)
