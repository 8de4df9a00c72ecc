"""xP3 mixtures: language rates, the ablation builder, the held-out guard and realised rates.

Rate schemes over languages (rates are relative; seqio normalises them):

* ``bloomz``: the BLOOMZ blend, each language's byte share of xP3 with code upsampled to 5.93%
  (tasks.languages); project default, docs/mt0-reference.md §5.3 choice (1a);
* ``proportional``: examples-proportional, n = published sample count, optionally capped (T5's
  ``rate_num_examples(maximum=cap)``);
* ``temperature``: n**alpha (mT5's language sampling, alpha = 0.3), after the optional cap.

``import tasks.xp3`` registers, with these rates: ``xp3`` and ``xp3mt`` (scheme from gin
``tasks.mixtures.xp3_rates``), ``xp3_bloomz``, ``xp3_proportional``, ``xp3_temperature``, ``xp3_hf``
(HF ``datasets`` backend) and ``xp3_sample`` (the bundled sample, proportional to its rows).
Ablations: ``MIXTURE_OR_TASK_NAME = @tasks.mixtures.xp3_ablation()`` with its arguments bound in
gin; it registers the mixture when gin evaluates it and returns its name.

Dependencies point one way: tasks.xp3 imports this module and registers its dataset families
here (``register_catalog``); this module never imports tasks.xp3, and imports tasks.mc4 only to
add mC4 to an ablation. The held-out guard and TrainingMixture live in tasks.training_mixture.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

import gin
from tasks import languages as langs
from tasks import registry
from tasks.training_mixture import (  # noqa: F401  (re-exported: the guard's public names)
  HeldOutDatasetError,
  TrainingMixture,
  check_no_held_out,
  held_out_tasks,
)

SCHEMES = ("bloomz", "proportional", "temperature")


@gin.configurable(module="tasks.mixtures")
def xp3_rates(scheme: str = "bloomz", alpha: float = 0.3, cap: float | None = None):
  """gin knobs of the ``xp3``/``xp3mt``/``xp3_hf`` mixtures: (scheme, alpha, cap)."""
  return scheme, alpha, cap


def language_rate(lang: str, scheme: str = "bloomz", alpha: float = 0.3,
                  cap: float | None = None, counts: Mapping[str, float] | None = None) -> float:
  """The (unnormalised) rate of one xP3 language under a scheme; see the module docstring."""
  if scheme not in SCHEMES:
    raise ValueError(f"Unknown rate scheme {scheme!r} (gin tasks.mixtures.xp3_rates.scheme or "
                     f"the `scheme` argument); choose one of {SCHEMES}.")
  if not 0 < alpha <= 1:
    raise ValueError(f"Temperature alpha must be in (0, 1] (mT5 used 0.3), got {alpha}.")
  if cap is not None and cap <= 0:
    raise ValueError(f"Examples cap must be positive or None, got {cap}.")
  langs.check_languages([lang])
  if scheme == "bloomz":
    return langs.XP3_LANGUAGES[lang].bloomz_weight
  n = float(counts[lang] if counts is not None else langs.XP3_LANGUAGES[lang].samples)
  if cap is not None:
    n = min(n, cap)
  return n ** alpha if scheme == "temperature" else n


class LanguageRate:
  """A lazily evaluated rate (seqio calls it when the mixture is read, after gin is parsed)."""

  def __init__(self, lang: str, scheme: str | None = None, share: float = 1.0):
    self.lang, self.scheme, self.share = lang, scheme, share

  def __call__(self, task=None) -> float:
    scheme, alpha, cap = xp3_rates()
    return language_rate(self.lang, self.scheme or scheme, alpha, cap) * self.share


def examples_rate(task: seqio.Task) -> float:
  """Rate = number of training examples (counted by the source; for small local data)."""
  n = task.num_input_examples("train")
  if n is None:
    raise ValueError(f"Task {task.name!r} cannot count its examples; give the mixture rates.")
  return float(n)


def _validate_rates(rates: Mapping[str, float], where: str, allow_all_zero: bool = False) -> None:
  for key, rate in rates.items():
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate) or rate < 0:
      raise ValueError(f"{where}: rate for {key!r} is {rate!r}; rates must be numbers >= 0.")
  if allow_all_zero:
    return
  if not rates or not any(rate > 0 for rate in rates.values()):
    raise ValueError(f"{where}: all rates are zero (or none are given); at least one must be > 0.")


# ---------------------------------------------------------------------------- ablation builder


@dataclasses.dataclass(frozen=True)
class TaskCatalog:
  """What the ablation builder needs from the module that owns xP3's tasks (tasks.xp3)."""
  family: Callable  # name -> family (``.languages``, ``.title``); raises on an unknown name
  task_name: Callable  # (family, lang, backend) -> task name
  register_prompt_tasks: Callable  # (lang, family, extra_dataset_clusters) -> per-file tasks


_catalog: list[TaskCatalog] = []


def register_catalog(catalog: TaskCatalog) -> None:
  """Called by tasks.xp3 on import (re-imports replace the earlier catalog)."""
  _catalog[:] = [catalog]


def _xp3_catalog() -> TaskCatalog:
  if not _catalog:
    raise ValueError("tasks.mixtures.xp3_ablation needs the xP3 tasks: add `import tasks.xp3` to "
                     "the gin file, or --gin_bindings='import tasks.xp3' on the command line (or "
                     "import it in Python) before using the ablation builder.")
  return _catalog[0]


@gin.configurable(module="tasks.mixtures")
def xp3_ablation(name: str = "xp3_ablation", family: str = "xp3",
                 languages: Sequence[str] | None = None, exclude_languages: Sequence[str] = (),
                 clusters: Sequence[str] | None = None, exclude_clusters: Sequence[str] = (),
                 scheme: str | None = None, alpha: float | None = None, cap: float | None = None,
                 rates: Mapping[str, float] | None = None, mc4_fraction: float = 0.0,
                 mc4_languages: Sequence[str] | None = None, backend: str = "jsonl",
                 extra_dataset_clusters: Mapping[str, str] | None = None) -> str:
  """Registers an ablation mixture and returns its name (for ``MIXTURE_OR_TASK_NAME``).

  Args:
    name: the mixture name to register (re-registering replaces it).
    family: "xp3" or "xp3mt".
    languages: languages to include (default: all 46); ``exclude_languages`` removes some.
    clusters / exclude_clusters: keep / drop training clusters (tasks.languages.CLUSTERS). Needs
      the per-prompt files: one task per file is registered and each language's rate is shared
      among its kept files in proportion to their lines (counted when the mixture is first read).
    scheme, alpha, cap: rate scheme (default from gin ``tasks.mixtures.xp3_rates``).
    rates: custom rates; a language code overrides that language's rate, any other key names a
      registered task or mixture to add with that rate. Held-out eval sets are refused.
    mc4_fraction: share of mC4 span corruption in [0, 1); the mixture is then
      ``{name}.xp3`` at 1 - f and ``mc4`` (or ``{name}.mc4`` over ``mc4_languages``) at f.
    backend: "jsonl" or "hf" (language tasks only).
    extra_dataset_clusters: cluster of datasets missing from the xP3 card table.
  """
  xp3 = _xp3_catalog()
  fam = xp3.family(family)
  where = f"tasks.mixtures.xp3_ablation(name={name!r})"
  chosen = langs.check_languages(languages if languages is not None else fam.languages,
                                 fam.title, known=fam.languages)
  drop = set(langs.check_languages(exclude_languages, fam.title, known=fam.languages))
  chosen = [lang for lang in chosen if lang not in drop]
  if not chosen:
    raise ValueError(f"{where}: no languages left after exclude_languages={sorted(drop)}.")
  keep_clusters = langs.check_clusters(clusters) if clusters is not None else None
  drop_clusters = set(langs.check_clusters(exclude_clusters))
  g_scheme, g_alpha, g_cap = xp3_rates()
  scheme = scheme or g_scheme
  alpha = g_alpha if alpha is None else alpha
  cap = g_cap if cap is None else cap
  rates = dict(rates or {})
  _validate_rates(rates, where, allow_all_zero=True)
  misplaced = [k for k in rates if k in fam.languages and k not in chosen]
  if misplaced:
    raise ValueError(f"{where}: rates name language(s) {misplaced} that the language selection "
                     "excludes; drop them from `rates` or include them.")
  lang_rates = {lang: float(rates.pop(lang)) if lang in rates else
                language_rate(lang, scheme, alpha, cap) for lang in chosen}
  _validate_rates({**lang_rates, **rates}, where)
  if not 0 <= mc4_fraction < 1:
    raise ValueError(f"{where}: mc4_fraction must be in [0, 1), got {mc4_fraction}.")

  entries = []
  for lang, lang_rate in lang_rates.items():
    if lang_rate == 0:
      continue
    if keep_clusters is None and not drop_clusters:
      entries.append((xp3.task_name(family, lang, backend), lang_rate))
      continue
    prompt_tasks = xp3.register_prompt_tasks(lang, family, dict(extra_dataset_clusters or {}))
    unknown = [p.path for p in prompt_tasks if p.cluster is None and p.dataset is None]
    if unknown:
      raise ValueError(
          f"{where}: cannot tell the dataset of {len(unknown)} file(s), e.g. {unknown[:3]}; "
          "pass extra_dataset_clusters={'<dataset>': '<cluster>'} for them.")
    kept = [p for p in prompt_tasks if p.cluster is not None
            and (keep_clusters is None or p.cluster in keep_clusters)
            and p.cluster not in drop_clusters]
    entries += [(p.name, _FileShare(lang_rate, p.path, [k.path for k in kept])) for p in kept]
  for key, rate in rates.items():  # remaining keys name tasks or mixtures
    if key not in seqio.TaskRegistry.names() and key not in seqio.MixtureRegistry.names():
      raise ValueError(f"{where}: rates key {key!r} is neither an xP3 language nor a registered "
                       "task or mixture.")
    if rate > 0:
      entries.append((key, float(rate)))
  if not entries:
    raise ValueError(f"{where}: the selection is empty (check clusters and rates).")
  if mc4_fraction == 0:
    return registry.add_mixture(name, entries, mixture_cls=TrainingMixture).name
  from tasks import mc4

  registry.add_mixture(f"{name}.xp3", entries, mixture_cls=TrainingMixture)
  mc4_name = mc4.register_mc4_mixture(f"{name}.mc4", mc4_languages) if mc4_languages else "mc4"
  return registry.add_mixture(
      name, [(f"{name}.xp3", 1.0 - mc4_fraction), (mc4_name, float(mc4_fraction))],
      mixture_cls=TrainingMixture).name


class _FileShare:
  """A language's rate split over its kept per-prompt files in proportion to their lines."""

  def __init__(self, lang_rate: float, path: str, paths: Sequence[str]):
    self.lang_rate, self.path, self.paths = lang_rate, path, tuple(paths)

  def __call__(self, task=None) -> float:
    from tasks.sources import count_lines

    total = sum(count_lines(p) for p in self.paths)
    return self.lang_rate * count_lines(self.path) / total if total else 0.0


# ---------------------------------------------------------------------------- realised rates


def expected_rates(provider) -> dict[str, float]:
  """Normalised requested rate of each leaf task."""
  if isinstance(provider, str):
    provider = seqio.get_mixture_or_task(provider)
  if isinstance(provider, seqio.Task):
    return {provider.name: 1.0}
  rates = {t.name: provider.get_rate(t) for t in provider.tasks}
  total = sum(rates.values())
  return {k: v / total for k, v in rates.items()}


def realised_rates(provider, num_examples: int = 2000, split: str = "train", seed: int = 0,
                   sequence_length: Mapping[str, int] | None = None,
                   shard_info: seqio.ShardInfo | None = None,
                   shuffle: bool = False) -> dict[str, float]:
  """Share of each leaf task among ``num_examples`` examples of the mixture's actual stream.

  Mirrors ``seqio.Mixture.get_dataset`` (same tasks, rates, sampler and seed) with each task's
  examples tagged by task, so the counts are of real preprocessed examples. The sampler's
  choices do not depend on the order within a task, so ``shuffle`` only costs time.
  """
  if isinstance(provider, str):
    provider = seqio.get_mixture_or_task(provider)
  if isinstance(provider, seqio.Task):
    return {provider.name: 1.0}
  tasks = [t for t in provider.tasks if split in t.splits]
  rates = [provider.get_rate(t) for t in tasks]
  keys = set(provider.output_features)
  datasets = []
  for i, task in enumerate(tasks):
    ds = provider.get_task_dataset(task, keys, sequence_length, split, shuffle=shuffle, seed=seed,
                                   shard_info=shard_info, num_epochs=None)
    datasets.append(ds.map(lambda x, i=i: tf.constant(i, tf.int64)))
  mixed = provider._sample_fn(datasets, rates, seed)  # the Mixture's own sampler
  counts = collections.Counter(int(i) for i in mixed.take(num_examples).as_numpy_iterator())
  total = sum(counts.values()) or 1
  return {t.name: counts.get(i, 0) / total for i, t in enumerate(tasks)}


def rate_table(provider, realised: Mapping[str, float]) -> str:
  """Requested vs realised share per task, as text."""
  expected = expected_rates(provider)
  width = max(len(k) for k in expected)
  lines = [f"{'task':<{width}}  requested  realised"]
  for name in sorted(expected, key=lambda k: -expected[k]):
    lines.append(f"{name:<{width}}  {100 * expected[name]:8.2f}%  "
                 f"{100 * realised.get(name, 0.0):7.2f}%")
  return "\n".join(lines)


def max_rate_error(provider, realised: Mapping[str, float]) -> float:
  expected = expected_rates(provider)
  return float(np.max([abs(expected[k] - realised.get(k, 0.0)) for k in expected]))
