"""Generation metrics for generative validation prompts: sacrebleu BLEU / chrF, ROUGE.

Each function has seqio's metric signature ``(targets, predictions) -> {name: value}``
(scores on a 0-100 scale), so it serves a seqio Task's ``metric_fns`` and
``xmtf infer --gin.METRICS=...`` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sacrebleu
from rouge_score import rouge_scorer


class MetricError(ValueError):
  """Unknown metric name or mismatched inputs."""


def _check(targets: Sequence[str], predictions: Sequence[str]) -> None:
  if len(targets) != len(predictions):
    raise MetricError(f"{len(targets)} targets but {len(predictions)} predictions.")
  if not targets:
    raise MetricError("No examples to score.")


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU (sacrebleu defaults: 13a tokenization, exp smoothing), as T5's metric."""
  _check(targets, predictions)
  return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(targets)]).score}


def chrf(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  _check(targets, predictions)
  return {"chrf": sacrebleu.corpus_chrf(list(predictions), [list(targets)]).score}


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/Lsum F-measure (Porter stemming, newline-split summaries), as T5's."""
  _check(targets, predictions)
  types = ("rouge1", "rouge2", "rougeLsum")
  scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
  totals = dict.fromkeys(types, 0.0)
  for t, p in zip(targets, predictions):
    scores = scorer.score(t.replace(" . ", " .\n"), p.replace(" . ", " .\n"))
    for k in types:
      totals[k] += scores[k].fmeasure
  return {k: 100.0 * v / len(targets) for k, v in totals.items()}


METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], dict[str, float]]] = {
    "bleu": bleu, "chrf": chrf, "rouge": rouge}


def compute(names: Sequence[str], targets: Sequence[str], predictions: Sequence[str]
            ) -> dict[str, float]:
  unknown = [n for n in names if n not in METRICS]
  if unknown:
    raise MetricError(f"Unknown metric(s) {unknown}; choose from {sorted(METRICS)}.")
  out: dict[str, float] = {}
  for n in names:
    out.update(METRICS[n](targets, predictions))
  return out
