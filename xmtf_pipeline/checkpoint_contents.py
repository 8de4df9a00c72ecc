"""What a checkpoint brings with it: its model config and its vocabulary.

An HF folder has ``config.json`` and ``spiece.model`` (extra ids in ``tokenizer_config.json``);
a run of ours or of T5X has ``MODEL_DIR/config.gin`` (the architecture, a vocabulary binding or
the task whose vocabulary it trained with) and, after ``xmtf import-hf``, ``spiece.model``.
``xmtf eval`` and ``xmtf infer`` use these unless gin or a flag names others.
"""

from __future__ import annotations

import os

from xmtf_pipeline.network import T5Config


class CheckpointContentsError(ValueError):
  """A checkpoint that does not say what it is; the message says what to pass."""


VOCAB_PATH_BINDING = "tasks.vocab.mt5_vocabulary_config.path"


def model_dir_of(checkpoint_path: str) -> str:
  """MODEL_DIR of ``MODEL_DIR`` or ``MODEL_DIR/checkpoint_N``."""
  path = os.path.normpath(checkpoint_path)
  return os.path.dirname(path) if os.path.basename(path).startswith("checkpoint_") else path


def model_config_of(checkpoint_path: str) -> tuple[T5Config, str] | None:
  """The architecture a checkpoint names itself: an HF folder's config.json, a run's config.gin."""
  from xmtf_pipeline.interop import hf_export, hf_import
  if hf_import.is_hf_dir(checkpoint_path):
    return (hf_import.t5_config_from_hf(hf_import.read_config(checkpoint_path),
                                        os.path.join(checkpoint_path, "config.json")),
            os.path.join(checkpoint_path, "config.json"))
  model_dir = model_dir_of(checkpoint_path)
  config = hf_export.model_config_from_run(hf_export.read_run_config(model_dir))
  return (config, os.path.join(model_dir, "config.gin")) if config else None


def bind_model_config(checkpoint_path: str) -> None:
  """Binds MODEL_CONFIG from the checkpoint's own description when no model gin set it."""
  import gin
  found = model_config_of(checkpoint_path)
  if found is None:
    raise CheckpointContentsError(
        f"No model config: {checkpoint_path} is neither a Hugging Face folder (config.json) nor "
        "in a MODEL_DIR with config.gin. Name the model: --model mt5_large (gin/models/*.gin) or "
        "--gin_file=models/mt5_large.gin.")
  config, source = found
  lines = ["from __gin__ import dynamic_registration", "from xmtf_pipeline import network",
           "MODEL_CONFIG = @network.T5Config()"]
  for name in ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers", "num_decoder_layers",
               "head_dim", "mlp_dim", "relpos_num_buckets", "relpos_max_distance",
               "layer_norm_epsilon", "dtype"):
    lines.append(f"MODEL_CONFIG/network.T5Config.{name} = {getattr(config, name)!r}")
  lines.append("MODEL_CONFIG/network.T5Config.dropout_rate = %DROPOUT_RATE")
  with gin.unlock_config():
    gin.parse_config("\n".join(lines))
  print(f"Model: {source} ({config.num_encoder_layers}+{config.num_decoder_layers} layers, "
        f"d_model {config.emb_dim}, {config.vocab_size:,} embeddings)", flush=True)


def checkpoint_vocabulary(checkpoint_path: str) -> tuple[str, int | None, str] | None:
  """The SentencePiece model a checkpoint carries: (path, declared extra ids, note) or None.

  An HF folder's ``spiece.model`` (extra ids from its tokenizer_config.json); for our and T5X
  checkpoints, the run's ``MODEL_DIR/config.gin`` vocabulary, else ``MODEL_DIR/spiece.model``
  (``xmtf import-hf`` keeps it there), else the vocabulary of the run's task, as export-hf
  finds it (e.g. the demo's sample model).
  """
  from tasks import vocab as vocab_lib
  from xmtf_pipeline.interop import hf_export, hf_import
  if "://" in checkpoint_path:
    return None
  if hf_import.is_hf_dir(checkpoint_path):
    spm = os.path.join(checkpoint_path, "spiece.model")
    if os.path.isfile(spm):
      return spm, vocab_lib.declared_extra_ids(checkpoint_path), ""
    return None
  model_dir = model_dir_of(checkpoint_path)
  run = hf_export.read_run_config(model_dir)
  path = run.get(VOCAB_PATH_BINDING)
  if isinstance(path, str):
    extra = run.get("tasks.vocab.mt5_vocabulary_config.extra_ids")
    return path, extra if isinstance(extra, int) else None, f"from {model_dir}/config.gin"
  spm = os.path.join(model_dir, "spiece.model")
  if os.path.isfile(spm):
    return spm, vocab_lib.declared_extra_ids(model_dir), ""
  if isinstance(run.get("MIXTURE_OR_TASK_NAME"), str):  # as export-hf: the run's task's own
    try:
      path, extra, how = hf_export.resolve_spm(None, run, model_dir)
    except hf_export.HFExportError as e:
      print(f"Vocabulary: not found through the run's task ({e})", flush=True)
      return None
    if path == vocab_lib.mt5_vocabulary_config()[0]:
      return None  # the task uses the mT5 default: its usual order (gin, env, GCS) applies
    return path, extra, f"{how}, from {model_dir}/config.gin"
  return None


def choose_vocabulary(checkpoint_path: str | None) -> str:
  """Makes the mT5 vocabulary resolve to the checkpoint's own model unless one was set; returns
  the one line saying which vocabulary is used and why."""
  from tasks import vocab as vocab_lib
  from xmtf_pipeline import gin_config
  found = checkpoint_vocabulary(checkpoint_path) if checkpoint_path else None
  vocab_lib.use_checkpoint_vocabulary(None)
  if gin_config.macro_binding("VOCABULARY") is not None:
    vocabulary = gin_config.evaluate("%VOCABULARY")
    if not isinstance(vocabulary, vocab_lib.LazySentencePieceVocabulary):
      what = getattr(vocabulary, "sentencepiece_model_file", None) or type(vocabulary).__name__
      extra = getattr(vocabulary, "extra_ids", "?")
      ignored = f"; it wins over the checkpoint's own {found[0]}" if found else ""
      return f"Vocabulary: {what} (set by VOCABULARY in gin; {extra} extra ids){ignored}"
  if found:
    vocab_lib.use_checkpoint_vocabulary(*found)
  path, _, how = vocab_lib.mt5_vocabulary_config(describe=True)
  if found and path != found[0]:
    how += f"; it wins over the checkpoint's own {found[0]}"
  return f"Vocabulary: {path} ({how})"
