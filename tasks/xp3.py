"""xP3, xP3mt and P3 as SeqIO tasks (one per language), per-prompt-file tasks, and the sample.

Import this module (``import tasks.xp3`` in a T5X gin file) to register:

* ``xp3_{lang}`` / ``xp3mt_{lang}`` for the 46 xP3 codes (``code`` included) and ``p3`` (English),
  reading ``{root}/{lang}/merged_{lang}.jsonl`` or, when absent, every per-prompt file
  ``{root}/{lang}/xp3_{dataset}_{subset}_{split}_{template}.jsonl``;
* ``xp3_hf_{lang}`` / ``xp3mt_hf_{lang}`` / ``p3_hf``: the same records through HF ``datasets``
  (local files under the root if one is set, else the hub repo, served from the HF cache offline);
* ``xp3_sample_{lang}`` over the bundled sample (tasks/data/xp3_sample) with its tiny vocabulary;
* the mixtures of tasks.mixtures (``xp3``, ``xp3mt``, ``xp3_sample``, ...).

Roots: gin ``tasks.xp3.xp3_dir.path`` (``xp3mt_dir``, ``p3_dir``) or env ``XP3_DIR`` (``XP3MT_DIR``,
``P3_DIR``), looked up when data are first read. Nothing is read, listed or fetched at import.
Splits: ``train`` and ``validation``; validation is every ``every``-th line of each file
(``tasks.xp3.validation_holdout``, default every 100th line = 1%, no cap), train the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import re
from pathlib import Path

import tensorflow as tf

import gin
from tasks import languages, mixtures, registry, vocab
from tasks.preprocessors import exact_match, finetune_preprocessors, strip_postprocessor
from tasks.sources import HFDatasetsSource, Holdout, JsonlSource, env_or, load_json_with_datasets

# seqio's default buffer (1,000) is too small to mix xP3's per-prompt files; merged files were
# already shuffled by BigScience (`shuf`), so this only decorrelates neighbouring lines.
SHUFFLE_BUFFER_SIZE = 10_000

SAMPLE_DIR = Path(importlib.resources.files("tasks"), "data", "xp3_sample").resolve()  # package data
SAMPLE_LANGUAGES = ("ar", "code", "en", "es", "fr", "hi", "id", "pt", "sw", "vi", "yo", "zh")
SAMPLE_HOLDOUT = Holdout(every=10)
SAMPLE_SHUFFLE_BUFFER_SIZE = 1_000  # > 3 passes over the largest sample file; fast to fill.


class DataMissingError(FileNotFoundError):
  """Data that are not where the configuration says; the message says how to get them."""


@gin.configurable(module="tasks.xp3")
def xp3_dir(path: str | None = None) -> str | None:
  """Root of xP3 (the folder holding ``{lang}/merged_{lang}.jsonl``); env ``XP3_DIR``."""
  return env_or(path, "XP3_DIR")


@gin.configurable(module="tasks.xp3")
def xp3mt_dir(path: str | None = None) -> str | None:
  """Root of xP3mt (same layout); env ``XP3MT_DIR``."""
  return env_or(path, "XP3MT_DIR")


@gin.configurable(module="tasks.xp3")
def p3_dir(path: str | None = None) -> str | None:
  """Root of P3 in xP3's record format (``en/`` below it, or the files directly); env ``P3_DIR``."""
  return env_or(path, "P3_DIR")


@gin.configurable(module="tasks.xp3")
def validation_holdout(every: int = 100, max_examples: int | None = None) -> Holdout:
  """The validation slice of every xP3/xP3mt/P3 file (see tasks.sources.Holdout)."""
  return Holdout(every=every, max_examples=max_examples)


@gin.configurable(module="tasks.xp3")
def hf_cache_dir(path: str | None = None) -> str | None:
  """``cache_dir`` for HF ``datasets`` (None: its default under ``HF_HOME``)."""
  return path


@dataclasses.dataclass(frozen=True)
class Family:
  """One published dataset in xP3's record format."""
  prefix: str
  title: str
  env: str
  root_fn: object
  hf_repo: str
  languages: tuple[str, ...]
  prompt_glob: str = "xp3_*.jsonl"

  def root(self) -> str | None:
    return self.root_fn()

  def download_hint(self, lang: str, root: str | None = None) -> str:
    return (f"hf download {self.hf_repo} --repo-type dataset --include '{lang}/*' "
            f"--local-dir {root or '/path/to/' + self.title}")


FAMILIES = {
    "xp3": Family("xp3", "xP3", "XP3_DIR", xp3_dir, "bigscience/xP3",
                  tuple(languages.XP3_LANGUAGES)),
    "xp3mt": Family("xp3mt", "xP3mt", "XP3MT_DIR", xp3mt_dir, "bigscience/xP3mt",
                    tuple(languages.XP3_LANGUAGES)),
    # P3's layout in xP3 format is not published in detail [unverified]: en/ or the root itself.
    "p3": Family("p3", "P3", "P3_DIR", p3_dir, "Muennighoff/P3", ("en",), "*.jsonl"),
}


def family(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"Unknown dataset family {name!r}; choose one of {sorted(FAMILIES)}.")
  return FAMILIES[name]


def language_dir(fam: Family, lang: str) -> str:
  """``{root}/{lang}``, or a DataMissingError saying which setting or folder is missing."""
  root = fam.root()
  gin_name = {"xp3": "xp3_dir", "xp3mt": "xp3mt_dir", "p3": "p3_dir"}[fam.prefix]
  if not root:
    raise DataMissingError(
        f"{fam.title} root is not set: export {fam.env}=/path/to/{fam.title} (or bind gin "
        f"tasks.xp3.{gin_name}.path). Download a language with: {fam.download_hint(lang)}")
  if not tf.io.gfile.isdir(root):
    raise DataMissingError(
        f"{fam.title} root {root!r} (from {fam.env} or tasks.xp3.{gin_name}.path) is not a "
        f"directory. Download with: {fam.download_hint(lang, root)}")
  folder = f"{root.rstrip('/')}/{lang}"
  if tf.io.gfile.isdir(folder):
    return folder
  if fam.prefix == "p3" and tf.io.gfile.glob(f"{root.rstrip('/')}/{fam.prompt_glob}"):
    return root.rstrip("/")
  present = sorted(p.rstrip("/") for p in tf.io.gfile.listdir(root))[:12]
  raise DataMissingError(
      f"{fam.title} language folder {folder!r} is missing (root {fam.env}={root!r} holds: "
      f"{present}). Download it with: {fam.download_hint(lang, root)}")


def prompt_files(fam: Family, lang: str) -> list[str]:
  """The per-prompt files of a language folder (sorted)."""
  return sorted(tf.io.gfile.glob(f"{language_dir(fam, lang)}/{fam.prompt_glob}"))


def language_files(fam: Family, lang: str) -> list[str]:
  """``merged_{lang}.jsonl`` if present, else the per-prompt files; raises if neither exists."""
  folder = language_dir(fam, lang)
  merged = f"{folder}/merged_{lang}.jsonl"
  if tf.io.gfile.exists(merged):
    return [merged]
  files = [f for f in prompt_files(fam, lang) if not f.endswith(f"/merged_{lang}.jsonl")]
  if not files:
    raise DataMissingError(
        f"{folder} has neither merged_{lang}.jsonl nor per-prompt {fam.prompt_glob} files. "
        f"Download with: {fam.download_hint(lang, fam.root())}")
  return files


def task_name(fam: str, lang: str, backend: str = "jsonl") -> str:
  """``xp3_fr``, ``xp3_hf_fr``, ``p3``, ``p3_hf``."""
  if backend not in ("jsonl", "hf"):
    raise ValueError(f"Unknown backend {backend!r}: use 'jsonl' or 'hf'.")
  hf = "_hf" if backend == "hf" else ""
  return f"p3{hf}" if fam == "p3" else f"{fam}{hf}_{lang}"


def _hf_load(fam: Family, lang: str):
  """Local files through datasets' json builder if a root is set, else the hub (or its cache)."""
  if fam.root():
    files = language_files(fam, lang)
    return load_json_with_datasets(files, f"{fam.title} {lang}", hf_cache_dir())
  import datasets

  data_files = {"train": f"{lang}/merged_{lang}.jsonl"} if fam.prefix != "p3" else None
  try:
    return datasets.load_dataset(fam.hf_repo, data_files=data_files, split="train",
                                 cache_dir=hf_cache_dir())
  except Exception as e:  # network, auth and cache misses all surface here.
    raise DataMissingError(
        f"HF datasets could not load {fam.hf_repo} ({lang}): {type(e).__name__}: {e}. Offline "
        f"(HF_DATASETS_OFFLINE=1) only a cached copy works; or set {fam.env} to local files "
        f"({fam.download_hint(lang)}).") from e


def _register_language(fam: Family, lang: str) -> None:
  features = vocab.output_features(vocab.mt5_vocabulary())
  common = dict(output_features=features, preprocessors=finetune_preprocessors(),
                shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)
  files_fn = functools.partial(language_files, fam, lang)
  registry.add_task(
      task_name(fam.prefix, lang),
      source=JsonlSource(files_fn, holdout=validation_holdout,
                         description=f"{fam.title} {lang} (jsonl)"), **common)
  registry.add_task(
      task_name(fam.prefix, lang, "hf"),
      source=HFDatasetsSource(functools.partial(_hf_load, fam, lang), holdout=validation_holdout,
                              description=f"{fam.title} {lang} (HF datasets)"), **common)


@dataclasses.dataclass(frozen=True)
class PromptTask:
  """A task over one per-prompt file, with the dataset and cluster parsed from its name."""
  name: str
  lang: str
  path: str
  dataset: str | None
  cluster: str | None


def prompt_task_name(fam: str, lang: str, path: str) -> str:
  stem = Path(path).stem
  stem = stem[4:] if stem.startswith("xp3_") else stem
  return f"{fam}_{lang}.{re.sub(r'[^0-9A-Za-z_.]', '_', stem)}"


def register_prompt_tasks(lang: str, fam: str = "xp3",
                          extra_dataset_clusters: dict[str, str] | None = None) -> list[PromptTask]:
  """Registers one task per per-prompt file of a language (lists the folder: call it lazily).

  Used by ablations that select datasets or clusters; ``merged_{lang}.jsonl`` does not record
  which dataset a line came from, so those ablations need the per-prompt files.
  """
  f = family(fam)
  languages.check_languages([lang], f.title, known=f.languages)
  files = [p for p in prompt_files(f, lang) if not p.endswith(f"/merged_{lang}.jsonl")]
  if not files:
    raise DataMissingError(
        f"{language_dir(f, lang)} has no per-prompt files ({f.prompt_glob}); dataset and cluster "
        "ablations need them because merged files do not record the dataset of a line. Regenerate "
        "xP3 per prompt (bigscience data/xp3/prepare_xp3_train.py) or ablate by language only.")
  out = []
  for path in files:
    dataset = languages.dataset_from_filename(Path(path).stem, extra_dataset_clusters)
    name = prompt_task_name(fam, lang, path)
    registry.add_task(
        name, source=JsonlSource(lambda p=path: [p], holdout=validation_holdout,
                                 description=f"{f.title} {lang} {Path(path).name}"),
        output_features=vocab.output_features(vocab.mt5_vocabulary()),
        preprocessors=finetune_preprocessors(), shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
        datasets=(dataset,) if dataset else ())
    out.append(PromptTask(name, lang, path, dataset,
                          languages.cluster_of(dataset, extra_dataset_clusters) if dataset else None))
  return out


def sample_files(lang: str) -> list[str]:
  path = SAMPLE_DIR / lang / f"merged_{lang}.jsonl"
  if not path.is_file():
    raise DataMissingError(
        f"Bundled sample file {path} is missing; rebuild it with "
        "`.venv/bin/python tasks/data/make_xp3_sample.py`.")
  return [str(path)]


_SAMPLE_VOCAB = vocab.sample_vocabulary()


def _register_sample(lang: str) -> None:
  registry.add_task(
      f"xp3_sample_{lang}",
      source=JsonlSource(functools.partial(sample_files, lang), holdout=lambda: SAMPLE_HOLDOUT,
                         count_examples=True, description=f"xP3 sample {lang}"),
      output_features=vocab.output_features(_SAMPLE_VOCAB),
      preprocessors=finetune_preprocessors(), postprocess_fn=strip_postprocessor,
      metric_fns=[exact_match], shuffle_buffer_size=SAMPLE_SHUFFLE_BUFFER_SIZE)


def register_all() -> None:
  """Registers every task of this module and the standard mixtures (idempotent, no I/O)."""
  for fam in FAMILIES.values():
    for lang in fam.languages:
      _register_language(fam, lang)
  for lang in SAMPLE_LANGUAGES:
    _register_sample(lang)
  register_standard_mixtures()
  mixtures.register_catalog(mixtures.TaskCatalog(family, task_name, register_prompt_tasks))


def _language_mixture(name: str, fam: str, scheme: str | None, backend: str = "jsonl"):
  return registry.add_mixture(
      name, [(task_name(fam, lang, backend), mixtures.LanguageRate(lang, scheme))
             for lang in family(fam).languages], mixture_cls=mixtures.TrainingMixture)


def register_standard_mixtures() -> None:
  """Registers the xP3 mixtures (rates from tasks.mixtures; no I/O)."""
  _language_mixture("xp3", "xp3", None)
  _language_mixture("xp3mt", "xp3mt", None)
  _language_mixture("xp3_hf", "xp3", None, backend="hf")
  for scheme in mixtures.SCHEMES:
    _language_mixture(f"xp3_{scheme}", "xp3", scheme)
  registry.add_mixture(
      "xp3_sample", [(f"xp3_sample_{lang}", mixtures.examples_rate) for lang in SAMPLE_LANGUAGES],
      mixture_cls=mixtures.TrainingMixture)


register_all()
