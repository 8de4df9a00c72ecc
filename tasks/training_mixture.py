"""The training mixture type: a seqio.Mixture that refuses held-out evaluation data.

Below every task module (tasks.xp3, tasks.mc4 and tasks.mixtures build their mixtures with it),
so none of them needs another to register a mixture.
"""

from __future__ import annotations

import seqio

from tasks import languages as langs


class HeldOutDatasetError(ValueError):
  """A training mixture that contains a held-out evaluation dataset."""


def held_out_tasks(provider: seqio.Task | seqio.Mixture) -> list[tuple[str, str]]:
  """(task, held-out dataset) pairs found among the leaf tasks of a task or mixture."""
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  found = []
  for task in tasks:
    for name in (*getattr(task, "_xmtf_datasets", ()), task.name):
      match = langs.held_out_match(name)
      if match:
        found.append((task.name, match))
        break
  return found


def check_no_held_out(provider) -> None:
  """Raises HeldOutDatasetError if a task/mixture (or its name) would train on an eval set."""
  if isinstance(provider, str):
    provider = seqio.get_mixture_or_task(provider)
  found = held_out_tasks(provider)
  if found:
    listing = ", ".join(f"{t} ({d})" for t, d in found)
    raise HeldOutDatasetError(
        f"Mixture {provider.name!r} would train on held-out evaluation data: {listing}. mT0 never "
        "trains on XNLI, XCOPA, XStoryCloze, XWinograd, ANLI, CB, RTE, COPA, StoryCloze, "
        "Winogrande or HumanEval (docs/mt0-reference.md §6.4); remove these tasks or rates.")


class TrainingMixture(seqio.Mixture):
  """A seqio.Mixture that refuses, at construction, to contain a held-out evaluation dataset."""

  def __init__(self, name, tasks, default_rate=None, **kwargs):
    super().__init__(name, tasks, default_rate=default_rate, **kwargs)
    check_no_held_out(self)
