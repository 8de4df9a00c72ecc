"""Rank classification: score every answer choice of a prompt, predict the argmax.

The mT0 evaluation protocol (t-zero fork ``evaluation/run_eval.py``; reference doc §8.1):

* the prompt is tokenized **without** EOS (``add_special_tokens=False``);
* each answer choice gets one leading space and **ends in EOS**;
* a choice's score is the **sum** of its target tokens' log-probabilities (float32
  log-softmax), EOS included, with **no** length normalisation;
* the prediction is the first argmax over choices; accuracy against the gold index.

The encoder runs once per prompt: a batch of B prompts with up to C choices each is
encoded as B rows, and the decoder scores the B*C (prompt, choice) rows against
those B encoder outputs (repeated, not recomputed). ``score_pairs`` is the
brute-force reference that runs the whole model once per pair.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmtf_pipeline.network import Transformer

EOS_ID = 1
TRUNCATE_SIDES = ("right", "left")
NEG_INF = -1.0e10


class RankClassificationError(ValueError):
  """Input that cannot be rank-classified; the message says which example and why."""


@dataclasses.dataclass
class RankExample:
  """One tokenized prompt: ``inputs`` without EOS, each choice ending in EOS."""
  inputs: np.ndarray
  choices: list[np.ndarray]
  label: int | None = None


@dataclasses.dataclass
class TruncationCounts:
  """How many prompts / choices were cut to the feature lengths (reported, never fatal)."""
  inputs: int = 0
  targets: int = 0

  def add(self, other: TruncationCounts) -> None:
    self.inputs += other.inputs
    self.targets += other.targets


def tokenize_example(vocabulary: Any, input_text: str, choices: Sequence[str],
                     label: int | None, max_input_length: int, max_target_length: int,
                     truncate_side: str = "right",
                     counts: TruncationCounts | None = None) -> RankExample:
  """Tokenizes one prompt by the protocol, truncating (and counting) over-long sequences.

  Prompts longer than ``max_input_length`` lose tokens on ``truncate_side``: 'right'
  keeps the beginning (what HF tokenizers' ``truncation=True`` did in the published
  runs), 'left' keeps the end (where most templates put the question). Choices
  longer than ``max_target_length`` keep their first tokens and the EOS.
  """
  if truncate_side not in TRUNCATE_SIDES:
    raise RankClassificationError(f"truncate_side must be one of {TRUNCATE_SIDES}, got "
                                  f"{truncate_side!r}.")
  if max_input_length < 1 or max_target_length < 2:
    raise RankClassificationError(
        f"Feature lengths too small: inputs {max_input_length} (>= 1), targets "
        f"{max_target_length} (>= 2: one token and EOS).")
  if not choices:
    raise RankClassificationError(f"Prompt {input_text[:60]!r} has no answer choices.")
  if label is not None and not 0 <= label < len(choices):
    raise RankClassificationError(f"Label {label} is not an index into {len(choices)} choices.")
  counts = counts if counts is not None else TruncationCounts()
  inputs = list(vocabulary.encode(input_text))
  if len(inputs) > max_input_length:
    counts.inputs += 1
    inputs = inputs[:max_input_length] if truncate_side == "right" else inputs[-max_input_length:]
  targets = []
  for choice in choices:
    ids = list(vocabulary.encode(" " + choice))
    if len(ids) + 1 > max_target_length:
      counts.targets += 1
      ids = ids[:max_target_length - 1]
    targets.append(np.asarray(ids + [EOS_ID], np.int32))
  return RankExample(np.asarray(inputs, np.int32), targets, label)


def _bucket(n: int, minimum: int = 8) -> int:
  """The smallest of 8, 12, 16, 24, 32, 48, ... (powers of two and 1.5x them) >= n.

  Few distinct shapes (so few compilations) while padding at most ~50% per batch.
  """
  size = minimum
  while size < n:
    size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
  return size


def _target_bucket(n: int) -> int:
  """Powers of two from 16: answer choices are short and the decoder cheap beside the
  encoder, so coarse target buckets cost little compute and save compilations."""
  size = 16
  while size < n:
    size *= 2
  return size


def _choice_scores(module: Transformer, params: Any, encoder_input_tokens: jax.Array,
                   targets: jax.Array) -> jax.Array:
  """(B, C) sum log-probs of targets (B, C, T) given prompts (B, L); one encoder pass."""
  global TRACES
  TRACES += 1  # runs only when jax traces: once per compiled (module, shapes)
  batch, num_choices, length = targets.shape
  encoded = module.apply({"params": params}, encoder_input_tokens, method=Transformer.encode)
  encoded = jnp.repeat(encoded, num_choices, axis=0)
  enc_tokens = jnp.repeat(encoder_input_tokens, num_choices, axis=0)
  flat = targets.reshape(batch * num_choices, length)
  decoder_inputs = jnp.pad(flat[:, :-1], ((0, 0), (1, 0)))  # shift right, start id 0
  logits = module.apply({"params": params}, encoded, enc_tokens, decoder_inputs, flat,
                        method=Transformer.decode)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token = jnp.take_along_axis(logp, flat[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(flat > 0, token, 0.0), axis=-1).reshape(batch, num_choices)


TRACES = 0  # how many times _choice_scores was traced (compiled), all scorers together
# One jitted function for every scorer: the module (a hashable dataclass of its config) is
# static, so all datasets, prompts and checkpoints of one model share its compiled shapes.
_SCORE_FN = jax.jit(_choice_scores, static_argnums=0)
_COMPILED: set[tuple[Any, ...]] = set()  # (module, parameter avals, shapes) compiled so far
_PARTITIONED: dict[tuple[Any, ...], Any] = {}  # (module, mesh, rules) -> partitioned scoring fn


def partitioned_score_fn(module: Transformer, params: Any, partitioner: Any):
  """``_choice_scores`` on the partitioner's mesh: parameters as they are sharded, prompts
  and choices split over ``data``, the (B, C) scores gathered; one per (module, mesh)."""
  key = (module, partitioner.mesh, partitioner.rules)
  if key not in _PARTITIONED:
    param_shardings = jax.tree_util.tree_map(lambda x: x.sharding, params)
    batch = partitioner.batch_sharding
    _PARTITIONED[key] = partitioner.partition(
        functools.partial(_choice_scores, module), (param_shardings, batch, batch),
        partitioner.replicated)
  return _PARTITIONED[key]


def _param_avals(params: Any) -> tuple[Any, ...]:
  leaves, treedef = jax.tree_util.tree_flatten(params)
  return (treedef, *((tuple(x.shape), str(x.dtype)) for x in leaves))


def compile_threads() -> int:
  """Threads for ahead-of-time compilation: XLA compiles one program on one core."""
  return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 1))


class RankScorer:
  """Scores tokenized examples in fixed-shape batches with one jitted function.

  Examples are sorted by prompt length and batched up to ``batch_size`` prompts and
  ``max_batch_tokens`` padded prompt tokens at a time (long prompts go in smaller
  batches); prompt lengths are padded to ``_bucket`` sizes, choices to
  ``_target_bucket`` sizes and short batches with empty rows, so a whole suite compiles a
  handful of shapes, once per process (``_SCORE_FN`` is shared by all scorers).
  ``compile`` compiles the shapes of coming ``score`` calls ahead, in parallel.
  ``examples`` and ``seconds`` add up what ``score`` did (wall time, with any compilation
  ``compile`` did not do ahead); ``compile_seconds`` and ``shapes_compiled`` what
  ``compile`` did.
  """

  def __init__(self, module: Transformer, params: Any, batch_size: int = 32,
               max_batch_tokens: int | None = None, partitioner: Any = None):
    if batch_size < 1:
      raise RankClassificationError(f"batch_size must be >= 1, got {batch_size}.")
    self.module = module
    self.params = params
    self.batch_size = batch_size
    self.max_batch_tokens = max_batch_tokens or batch_size * 512
    # With a partitioner (params sharded on its mesh) each batch is split over its data axis,
    # so batches are padded to a multiple of the data-parallel size with empty rows, whose
    # scores are dropped.
    self._rows_multiple = partitioner.data_parallel_size if partitioner is not None else 1
    self._partitioner = partitioner
    if partitioner is None:
      self._fn = functools.partial(_SCORE_FN, module)
      self._lower = functools.partial(_SCORE_FN.lower, module)
      mesh_key = None
    else:
      self._fn = partitioned_score_fn(module, params, partitioner)
      self._lower = self._fn.lower
      mesh_key = (partitioner.mesh, partitioner.rules)
    self._avals = (_param_avals(params), mesh_key)
    self.examples = 0
    self.seconds = 0.0
    self.compile_seconds = 0.0
    self.shapes_compiled = 0

  def rows_for(self, input_length: int) -> int:
    return max(1, min(self.batch_size, self.max_batch_tokens // max(input_length, 1)))

  def plan(self, examples: Sequence[RankExample]) -> list[list[int]]:
    """The batches (example indices) ``score`` runs: sorted by prompt length, then cut to
    at most ``batch_size`` prompts and ``max_batch_tokens`` padded prompt tokens."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].inputs),
                                                        len(examples[i].choices)))
    batches, start = [], 0

    def padded_tokens(rows: int) -> int:  # sorted: a batch's last prompt is its longest
      return rows * _bucket(len(examples[order[min(start + rows, len(order)) - 1]].inputs))

    while start < len(order):
      rows = self.batch_size
      while rows > 1 and padded_tokens(rows) > self.max_batch_tokens:
        rows -= 1
      batches.append(order[start:start + rows])
      start += len(batches[-1])
    return batches

  def batch_shapes(self, batch: Sequence[RankExample]) -> tuple[tuple[int, int],
                                                                tuple[int, int, int]]:
    """The (prompts, choices) array shapes a batch is padded to: its compiled shape."""
    in_len = _bucket(max(len(ex.inputs) for ex in batch))
    tgt_len = _target_bucket(max(len(c) for ex in batch for c in ex.choices))
    num_choices = max(len(ex.choices) for ex in batch)
    rows = max(self.rows_for(in_len), len(batch))  # one batch size per length bucket
    rows = -(-rows // self._rows_multiple) * self._rows_multiple
    return (rows, in_len), (rows, num_choices, tgt_len)

  def compile(self, example_sets: Sequence[Sequence[RankExample]],
              threads: int | None = None) -> int:
    """Compiles, before any scoring, each shape that ``score(s)`` for ``s`` in
    ``example_sets`` will run and this process has not compiled; returns how many.

    Tracing is serial, XLA's compilations run in ``threads`` parallel threads (default
    ``compile_threads()``); ``score`` then finds every shape in jit's cache. On a small
    suite compilation would otherwise cost more than scoring (17 shapes, ~2 s each for
    the tiny model on one CPU core).
    """
    t0 = time.perf_counter()
    shapes = {self.batch_shapes([s[i] for i in batch])
              for s in example_sets for batch in self.plan(s)}
    lowered = []
    for enc, tgt in sorted(shapes):
      key = (self.module, self._avals, enc, tgt)
      if key in _COMPILED:
        continue
      lowered.append((key, self._lower(
          self.params, jax.ShapeDtypeStruct(enc, jnp.int32),
          jax.ShapeDtypeStruct(tgt, jnp.int32))))
    if lowered:
      with concurrent.futures.ThreadPoolExecutor(threads or compile_threads()) as pool:
        list(pool.map(lambda item: item[1].compile(), lowered))
      _COMPILED.update(key for key, _ in lowered)
    self.shapes_compiled += len(lowered)
    self.compile_seconds += time.perf_counter() - t0
    return len(lowered)

  def score(self, examples: Sequence[RankExample]) -> list[np.ndarray]:
    """Per example, the float32 scores of its choices (in the choices' order)."""
    t0 = time.perf_counter()
    out: list[np.ndarray | None] = [None] * len(examples)
    for idx in self.plan(examples):
      batch = [examples[i] for i in idx]
      for i, ex, row in zip(idx, batch, self._score_batch(batch)):
        out[i] = row[:len(ex.choices)]
    self.examples += len(examples)
    self.seconds += time.perf_counter() - t0
    return out  # type: ignore[return-value]

  def _score_batch(self, batch: Sequence[RankExample]) -> np.ndarray:
    (rows, in_len), (_, num_choices, tgt_len) = self.batch_shapes(batch)
    enc = np.zeros((rows, in_len), np.int32)
    tgt = np.zeros((rows, num_choices, tgt_len), np.int32)
    for r, ex in enumerate(batch):
      enc[r, :len(ex.inputs)] = ex.inputs
      for c, choice in enumerate(ex.choices):
        tgt[r, c, :len(choice)] = choice
    _COMPILED.add((self.module, self._avals, enc.shape, tgt.shape))
    if self._partitioner is not None and jax.process_count() > 1:
      # Every process plans the same batches; each feeds the rows of its own devices, and the
      # scores come back replicated to all.
      arrays = self._partitioner.shard_global_batch({"enc": enc, "tgt": tgt})
      scores = np.asarray(self._fn(self.params, arrays["enc"], arrays["tgt"]).addressable_data(0))
    else:
      scores = np.asarray(self._fn(self.params, enc, tgt))
    return scores[:len(batch)]


@dataclasses.dataclass
class RankResult:
  """Scores, predictions and accuracy of one set of examples."""
  scores: list[np.ndarray]
  predictions: list[int]
  labels: list[int | None]

  @property
  def num_examples(self) -> int:
    return len(self.predictions)

  @property
  def accuracy(self) -> float | None:
    pairs = [(p, y) for p, y in zip(self.predictions, self.labels) if y is not None]
    if not pairs:
      return None
    return sum(int(p == y) for p, y in pairs) / len(pairs)


def rank_classify(scorer: RankScorer, examples: Sequence[RankExample]) -> RankResult:
  """Argmax over each example's choice scores (the first maximum on ties, as torch.argmax)."""
  return rank_classify_many(scorer, [examples])[0]


def rank_classify_many(scorer: RankScorer,
                       groups: Sequence[Sequence[RankExample]]) -> list[RankResult]:
  """``rank_classify`` of each group, all groups scored together (e.g. every prompt of one
  dataset): batches are sorted by length across groups, so fewer and fuller batches."""
  flat = [ex for group in groups for ex in group]
  scores = scorer.score(flat) if flat else []
  results, start = [], 0
  for group in groups:
    part = scores[start:start + len(group)]
    start += len(group)
    results.append(RankResult(part, [int(np.argmax(s)) for s in part],
                              [ex.label for ex in group]))
  return results


def score_pairs(model: Any, params: Any, examples: Sequence[RankExample]) -> list[np.ndarray]:
  """Brute-force reference: ``model.score_batch`` on every (prompt, choice) pair alone.

  ``model`` is an ``EncoderDecoderModel``; each pair is its own batch of one (padded to
  ``_bucket`` lengths, so few compilations), so the encoder runs once per pair. Slow by
  design: tests and benchmarks compare to it.
  """
  fn = jax.jit(model.score_batch)
  out = []
  for ex in examples:
    row = []
    for choice in ex.choices:
      enc = np.zeros((1, _bucket(len(ex.inputs))), np.int32)
      enc[0, :len(ex.inputs)] = ex.inputs
      tgt = np.zeros((1, _bucket(len(choice))), np.int32)
      tgt[0, :len(choice)] = choice
      batch = {"encoder_input_tokens": jnp.asarray(enc), "decoder_target_tokens": jnp.asarray(tgt),
               "decoder_input_tokens": jnp.asarray(np.pad(tgt[:, :-1], ((0, 0), (1, 0))))}
      row.append(float(fn(params, batch)[0]))
    out.append(np.asarray(row, np.float32))
  return out
