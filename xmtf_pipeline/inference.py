"""``xmtf infer``: generate from, or score with, a checkpoint (T5X's ``infer.py``).

Modes (``gin/runs/infer.gin`` ``INFER_MODE``):

* ``predict``: decode each input with ``DECODING`` = ``greedy``, ``beam`` (``BEAM_SIZE``,
  length penalty ``ALPHA``) or ``sample`` (``TEMPERATURE``, ``TOP_K``, ``TOP_P``, ``SEED``),
  all with the incremental decoding cache, up to ``TASK_FEATURE_LENGTHS['targets']`` tokens;
* ``score``: the sum log-likelihood (EOS included) of each row's ``targets``; a row with
  ``choices`` (a list) instead gets every choice scored against one encoder pass and the
  argmax as ``prediction`` (rank classification, choices space-prefixed).

Inputs: a JSON-lines file (``INPUT_FILE``; fields ``inputs`` and, to score, ``targets`` or
``choices``) or a registered SeqIO task (``MIXTURE_OR_TASK_NAME`` + ``SPLIT``, already
tokenized by its features). Output: ``INFER_OUTPUT_DIR/<name>-<mode>.jsonl-00000-of-00001``
(T5X's naming), one JSON object per input with ``inputs``, ``prediction`` / ``score`` and
``aux`` (beam scores, sample log-probs). Over-long inputs are truncated and counted.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from xmtf_pipeline import decoding, evaluation, models
from xmtf_pipeline import rank_classification as rc
from xmtf_pipeline.interop import restore
from xmtf_pipeline.rank_classification import _bucket

MODES = ("predict", "score")
DECODINGS = ("greedy", "beam", "sample")


class InferError(ValueError):
  """An inference request that cannot run; the message says which setting to change."""


def read_jsonl(path: str, mode: str, max_examples: int | None = None) -> list[dict[str, Any]]:
  """Rows of a JSON-lines file, each checked for the fields ``mode`` needs (file:line errors)."""
  if not os.path.isfile(path):
    raise InferError(f"INPUT_FILE {path} does not exist.")
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise InferError(f"{path}:{n}: not JSON ({e}).") from e
      if not isinstance(row, dict) or not isinstance(row.get("inputs"), str):
        raise InferError(f"{path}:{n}: needs a string field 'inputs'.")
      if mode == "score" and not (isinstance(row.get("targets"), str)
                                  or (isinstance(row.get("choices"), list) and row["choices"])):
        raise InferError(f"{path}:{n}: score mode needs 'targets' (a string) or 'choices' "
                         "(a non-empty list of strings).")
      rows.append(row)
      if max_examples is not None and len(rows) >= max_examples:
        break
  if not rows:
    raise InferError(f"INPUT_FILE {path} holds no rows; nothing to infer.")
  return rows


def _task_rows(task_name: str, split: str, lengths: dict[str, int], max_examples: int | None,
               module: str | None = None) -> tuple[list[dict[str, Any]], Any]:
  """Tokenized rows of a SeqIO task (its own features decide EOS), and its vocabulary."""
  from xmtf_pipeline import input_pipeline

  cfg = input_pipeline.DatasetConfig(task_name, lengths, split, 1, False, 0, module=module)
  task = input_pipeline.get_task(cfg)
  ds = task.get_dataset(lengths, split=split, shuffle=False, seed=0)
  if max_examples is not None:
    ds = ds.take(max_examples)
  vocab = task.output_features["inputs"].vocabulary
  rows = []
  def text(ex, key):  # the raw text when the task keeps it, else the decoded tokens
    raw = ex.get(f"{key}_pretokenized")
    return raw.decode("utf-8") if isinstance(raw, bytes) else vocab.decode(ex[key].tolist())

  for ex in ds.as_numpy_iterator():
    row = {"inputs": text(ex, "inputs"), "inputs_ids": ex["inputs"].tolist()}
    if "targets" in ex:
      row["targets"] = text(ex, "targets")
      row["targets_ids"] = ex["targets"].tolist()
    rows.append(row)
  if not rows:
    raise InferError(f"Task {task_name!r} split {split!r} yielded no examples.")
  return rows, vocab


def _encode(vocab: Any, text: str, length: int, add_eos: bool, side: str,
            counts: rc.TruncationCounts) -> list[int]:
  ids = list(vocab.encode(text))
  room = length - int(add_eos)
  if len(ids) > room:
    counts.inputs += 1
    ids = ids[:room] if side == "right" else ids[-room:]
  return ids + [decoding.EOS_ID] * int(add_eos)


def _batches(n: int, batch_size: int) -> Iterator[list[int]]:
  for start in range(0, n, batch_size):
    yield list(range(start, min(start + batch_size, n)))


def _pad(rows: Sequence[Sequence[int]], batch_size: int, length: int) -> np.ndarray:
  out = np.zeros((batch_size, length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def _trim(ids: Sequence[int]) -> list[int]:
  ids = list(map(int, ids))
  return ids[:ids.index(decoding.EOS_ID)] if decoding.EOS_ID in ids else ids


class Predictor:
  """Jitted decoders over fixed-shape batches (a handful of compilations per run)."""

  def __init__(self, model: models.EncoderDecoderModel, params: Any, max_length: int,
               decoding_method: str = "greedy", beam_size: int = 4, alpha: float = 0.6,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               partitioner: Any = None):
    if decoding_method not in DECODINGS:
      raise InferError(f"DECODING must be one of {DECODINGS}, got {decoding_method!r}.")
    if decoding_method == "sample":
      try:
        decoding.check_sampling_args(temperature, top_k, top_p)
      except ValueError as e:
        raise InferError(str(e)) from None
    if decoding_method == "beam" and beam_size < 1:
      raise InferError(f"BEAM_SIZE must be >= 1, got {beam_size}.")
    self.module, self.params, self.max_length = model.module, params, max_length
    self.method, self.beam_size, self.alpha = decoding_method, beam_size, alpha
    self.sampling = (temperature, top_k, top_p)
    self.rng = jax.random.PRNGKey(seed)
    self.partitioner = partitioner
    # Batches are split over the mesh's data axis: padded to a multiple of its size.
    self.rows_multiple = partitioner.data_parallel_size if partitioner is not None else 1
    self._decode = None  # made on the first batch, when the parameters (and shardings) are set

  def _decoder(self):
    """``decode(params, enc, key)`` for the method, jitted (partitioned with a partitioner)."""
    module, length = self.module, self.max_length
    if self.method == "greedy":
      def decode(params, enc, key):
        del key
        return decoding.greedy_decode(module, params, enc, length), None
    elif self.method == "beam":
      def decode(params, enc, key):
        del key
        tokens, scores = decoding.beam_search(module, params, enc, length, self.beam_size,
                                              self.alpha)
        return tokens[:, 0], scores[:, 0]
    else:
      temperature, top_k, top_p = self.sampling

      def decode(params, enc, key):
        return decoding.sample_decode(module, params, enc, length, key, temperature, top_k,
                                      top_p)
    if self.partitioner is None:
      return jax.jit(decode)
    p = self.partitioner
    return p.partition(decode, (jax.tree_util.tree_map(lambda x: x.sharding, self.params),
                                p.batch_sharding, p.replicated), p.replicated)

  def __call__(self, enc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(tokens (batch, max_length), aux score per row or None)."""
    if self._decode is None:
      self._decode = self._decoder()
    self.rng, key = jax.random.split(self.rng)
    if self.partitioner is not None and jax.process_count() > 1:
      # Every process decodes the same batches; each feeds its own devices' rows, and the
      # outputs come back replicated to all.
      enc = self.partitioner.shard_global_batch({"enc": enc})["enc"]
      tokens, aux = self._decode(self.params, enc, key)
      return (np.asarray(tokens.addressable_data(0)),
              None if aux is None else np.asarray(aux.addressable_data(0)))
    tokens, aux = self._decode(self.params, enc, key)
    return np.asarray(tokens), None if aux is None else np.asarray(aux)


def infer(*, model: models.EncoderDecoderModel, checkpoint_path: str, output_dir: str,
          vocabulary: Any = None, mode: str = "predict", input_file: str | None = None,
          task_name: str | None = None, task_module: str | None = None,
          split: str = "validation",
          feature_lengths: dict[str, int] | None = None, batch_size: int = 32,
          decoding_method: str = "greedy", beam_size: int = 4, alpha: float = 0.6,
          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
          max_examples: int | None = None, inputs_add_eos: bool = True,
          truncate_side: str = "right", params: Any = None,
          metrics: Sequence[str] = (), overwrite: bool = False, partitioner: Any = None) -> str:
  """The gin-configured body of ``xmtf infer``; returns the written file's path.

  ``overwrite`` (``--overwrite``) lets it replace the outputs of an earlier run with the same
  input and mode; without it, those are refused before any work. ``partitioner`` (as
  training's, NUM_PARTITIONS): the mesh over every visible device that holds the parameters
  and decodes or scores the batches. ``params`` (already loaded) are used as they are.
  """
  from xmtf_pipeline.partitioning import Partitioner

  evaluation.check_positive(batch_size, "BATCH_SIZE", "--batch_size", error=InferError)
  evaluation.check_positive(max_examples, "INFER_NUM_EXAMPLES", "--max_examples",
                            "; leave it unset for every row", error=InferError)
  if mode not in MODES:
    raise InferError(f"INFER_MODE must be one of {MODES}, got {mode!r}.")
  if (input_file is None) == (task_name is None):
    raise InferError("Give exactly one input: INPUT_FILE (JSON lines) or MIXTURE_OR_TASK_NAME "
                     "(a SeqIO task).")
  if truncate_side not in rc.TRUNCATE_SIDES:
    raise InferError(f"TRUNCATE_SIDE must be one of {rc.TRUNCATE_SIDES}, got {truncate_side!r}.")
  lengths = {"inputs": 512, "targets": 128, **(feature_lengths or {})}
  name = os.path.splitext(os.path.basename(input_file))[0] if input_file else task_name
  path = os.path.join(output_dir, f"{name}-{mode}.jsonl-00000-of-00001")
  metrics_path = os.path.join(output_dir, f"{name}-metrics.json")
  writer = jax.process_index() == 0  # process 0 writes; every process decodes its share
  evaluation.agreed(lambda: evaluation.check_output_dir(
      output_dir, [path] + ([metrics_path] if metrics else []), overwrite, "INFER_OUTPUT_DIR",
      error=InferError) if writer else None)
  if input_file is not None:
    if vocabulary is None:
      raise InferError("A JSON-lines INPUT_FILE needs VOCABULARY to tokenize it.")
    rows, vocab = read_jsonl(input_file, mode, max_examples), vocabulary
  else:
    rows, vocab = _task_rows(task_name, split, lengths, max_examples, task_module)
    if mode == "score" and any("targets_ids" not in r for r in rows):
      raise InferError(f"Task {task_name!r} has no 'targets' feature to score.")
  evaluation.check_vocabulary(vocab, model.config)
  if params is None:
    partitioner = partitioner or Partitioner()
    evaluation.check_model_parallel(partitioner, model.config)
    print(f"Inference on {partitioner.describe()}", flush=True)
  else:
    partitioner = None
  predictor = None
  if metrics:
    from xmtf_pipeline import generation_metrics
    if mode != "predict" or any("targets" not in r for r in rows):
      raise InferError("METRICS need INFER_MODE='predict' and a 'targets' string in every row.")
    generation_metrics.compute(metrics, ["x"], ["x"])  # unknown names fail before any work
  if mode == "predict":  # validate decoding settings before loading the checkpoint
    predictor = Predictor(model, None, lengths["targets"], decoding_method, beam_size, alpha,
                          temperature, top_k, top_p, seed, partitioner)
  if params is None:
    params = restore.restore_params(checkpoint_path, model.config, partitioner)
  counts = rc.TruncationCounts()
  t0 = time.time()
  if mode == "predict":
    predictor.params = params
    outputs = _predict(predictor, rows, vocab, lengths, batch_size, inputs_add_eos, truncate_side,
                       counts)
  else:
    outputs = _score(model, params, rows, vocab, lengths, batch_size, inputs_add_eos,
                     truncate_side, counts, partitioner)
  if not writer:
    return path
  _write_outputs(outputs, path, metrics, metrics_path)
  print(f"{mode}: {len(outputs)} rows in {time.time() - t0:.1f}s -> {path}"
        + (f" ({counts.inputs} inputs and {counts.targets} targets truncated to "
           f"{lengths['inputs']}/{lengths['targets']} tokens)" if counts.inputs + counts.targets
           else ""), flush=True)
  return path


def _write_outputs(outputs: list[dict[str, Any]], path: str, metrics: Sequence[str],
                   metrics_path: str) -> None:
  """T5X's inference file (a JSON object a row) and, with METRICS, their scores."""
  with open(path, "w", encoding="utf-8") as f:
    for out in outputs:
      f.write(json.dumps(out, ensure_ascii=False) + "\n")
  if metrics:
    from xmtf_pipeline import generation_metrics
    scores = generation_metrics.compute(metrics, [o["targets"] for o in outputs],
                                        [o["prediction"] for o in outputs])
    with open(metrics_path, "w") as f:
      json.dump(scores, f, indent=2)
    print("metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)


def _input_ids(row, vocab, lengths, add_eos, side, counts) -> list[int]:
  if "inputs_ids" in row:
    return row["inputs_ids"]
  return _encode(vocab, row["inputs"], lengths["inputs"], add_eos, side, counts)


def _predict(predictor: Predictor, rows, vocab, lengths, batch_size, add_eos, side,
             counts) -> list[dict[str, Any]]:
  outputs = []
  ids = [_input_ids(r, vocab, lengths, add_eos, side, counts) for r in rows]
  for idx in _batches(len(rows), batch_size):
    length = min(_bucket(max(len(ids[i]) for i in idx)), max(lengths["inputs"], 1))
    rows_padded = -(-batch_size // predictor.rows_multiple) * predictor.rows_multiple
    tokens, aux = predictor(_pad([ids[i] for i in idx], rows_padded, length))
    for j, i in enumerate(idx):
      out = {"inputs": rows[i]["inputs"], "prediction": vocab.decode(_trim(tokens[j]))}
      if "targets" in rows[i]:
        out["targets"] = rows[i]["targets"]
      if aux is not None:
        out["aux"] = {"score": float(aux[j])}
      outputs.append(out)
  return outputs


def _score(model, params, rows, vocab, lengths, batch_size, add_eos, side,
           counts, partitioner=None) -> list[dict[str, Any]]:
  examples = []
  for r in rows:
    inputs = _input_ids(r, vocab, lengths, add_eos, side, counts)
    if "targets_ids" in r:
      choices = [np.asarray(r["targets_ids"], np.int32)]
    else:
      texts = r["choices"] if "choices" in r else [r["targets"]]
      prefix = " " if "choices" in r else ""  # rank classification's space before each choice
      choices = []
      for text in texts:
        t = list(vocab.encode(prefix + str(text)))
        if len(t) + 1 > lengths["targets"]:
          counts.targets += 1
          t = t[:lengths["targets"] - 1]
        choices.append(np.asarray(t + [decoding.EOS_ID], np.int32))
    examples.append(rc.RankExample(np.asarray(inputs, np.int32), choices))
  scores = rc.RankScorer(model.module, params, batch_size, partitioner=partitioner).score(examples)
  outputs = []
  for r, s in zip(rows, scores):
    out = {"inputs": r["inputs"]}
    if "choices" in r:
      out.update(choices=r["choices"], scores=[float(x) for x in s],
                 prediction=r["choices"][int(np.argmax(s))])
    else:
      out.update(targets=r["targets"], score=float(s[0]))
    outputs.append(out)
  return outputs


INFER_DESCRIPTION = """Generate from, or score with, a checkpoint (T5X's infer.py with gin/runs/infer.gin).

What to set (plain flag = its T5X gin form; give one or the other):
  checkpoint    --checkpoint PATH    = --gin.CHECKPOINT_PATH   our MODEL_DIR[/checkpoint_N], a
                native T5X checkpoint, or a Hugging Face MT5 folder (config.json,
                model.safetensors, spiece.model: its model and tokenizer are used as they are)
  output folder --output_dir DIR     = --gin.INFER_OUTPUT_DIR
  input         --input_file FILE    = --gin.INPUT_FILE   JSON lines with 'inputs' (and, to
                score, 'targets' or 'choices'); or --task NAME = --gin.MIXTURE_OR_TASK_NAME
  mode          --mode MODE          = --gin.INFER_MODE   predict (default) or score
  decoding      --decoding METHOD    = --gin.DECODING   greedy (default), beam or sample
  vocabulary    --spm_model FILE     = --gin.tasks.vocab.mt5_vocabulary_config.path   default:
                the checkpoint's own (an HF folder's spiece.model, a run's config.gin), else
                $MT5_SPM_PATH, else mT5's on GCS; one line says which was used
  batch size    --batch_size N       = --gin.BATCH_SIZE   (default 32)
  max examples  --max_examples N     = --gin.INFER_NUM_EXAMPLES   (default: all)
  model         --model NAME         = --gin_file=models/NAME.gin   default: the HF folder's
                config.json or the run's MODEL_DIR/config.gin
  overwrite     --overwrite          = --gin.inference.infer.overwrite=True   replace an earlier
                run's output of the same input and mode (refused otherwise, before any work);
                other files there are kept
Beam size, sampling, lengths and metrics: --gin.BEAM_SIZE, TEMPERATURE, TOP_K, TOP_P,
TASK_FEATURE_LENGTHS, METRICS (gin/runs/infer.gin). Without --gin_file (or with model gins
only), gin/runs/infer.gin is used.

Example:
  xmtf infer --checkpoint mt0-small --input_file prompts.jsonl --output_dir out --decoding beam
The same in T5X form:
  xmtf infer --gin_file=models/mt5_small.gin --gin_file=runs/infer.gin \\
    --gin.CHECKPOINT_PATH=\\"/ckpts/mt0_small/checkpoint_1025000\\" \\
    --gin.INFER_OUTPUT_DIR=\\"out\\" --gin.INPUT_FILE=\\"prompts.jsonl\\" --gin.DECODING=\\"beam\\"

Written: OUTPUT_DIR/<input name>-<mode>.jsonl-00000-of-00001, one JSON object per input with
'inputs', 'prediction' or 'score', and 'aux' (T5X's naming)."""


def _infer_plain_flags():
  from xmtf_pipeline.flags import PlainFlag
  return (
      PlainFlag("--checkpoint", "CHECKPOINT_PATH",
                "our MODEL_DIR[/checkpoint_N], a T5X checkpoint or a Hugging Face MT5 folder"),
      PlainFlag("--output_dir", "INFER_OUTPUT_DIR", "folder for <input>-<mode>.jsonl-*"),
      PlainFlag("--input_file", "INPUT_FILE", "JSON lines with 'inputs' ('targets'/'choices')"),
      PlainFlag("--task", "MIXTURE_OR_TASK_NAME", "a registered SeqIO task instead of a file"),
      PlainFlag("--mode", "INFER_MODE", "predict or score"),
      PlainFlag("--decoding", "DECODING", "greedy, beam or sample"),
      PlainFlag("--spm_model", restore.VOCAB_PATH_BINDING,
                "SentencePiece model (default: the checkpoint's own, else mT5's)"),
      PlainFlag("--batch_size", "BATCH_SIZE", "rows per batch (default 32)", int),
      PlainFlag("--max_examples", "INFER_NUM_EXAMPLES", "rows to read (default: all)", int),
  )


def main(argv: list[str] | None = None, prog: str = "xmtf infer") -> int:
  return evaluation.main(argv, prog, entry=infer, description=INFER_DESCRIPTION,
                         plain=_infer_plain_flags(), run_gin="runs/infer.gin")
