"""Static tables: xP3's 46 languages, its 13 training clusters, held-out eval sets, mC4 languages.

Everything here is data copied from published sources (docs/mt0-reference.md §6.2-6.4, §7), so
mixtures can compute rates and ablations can validate names without any I/O.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Language:
  """One xP3 folder. ``bloomz_weight`` is the BLOOMZ blend weight in percent."""
  code: str
  name: str
  samples: int
  bytes_pct: float
  bloomz_weight: float


# (code, name, samples, bytes %). The xP3 dataset card; BLOOMZ weight = bytes % except code.
_XP3_TABLE = [
    ("tw", "Twi", 265_071, 0.112), ("bm", "Bambara", 265_180, 0.113),
    ("ak", "Akan", 265_071, 0.114), ("eu", "Basque", 269_973, 0.114),
    ("ca", "Catalan", 271_191, 0.117), ("fon", "Fon", 265_063, 0.119),
    ("st", "Southern Sotho", 265_063, 0.120), ("ki", "Kikuyu", 265_180, 0.121),
    ("tum", "Tumbuka", 265_063, 0.122), ("wo", "Wolof", 365_063, 0.129),
    ("ln", "Lingala", 365_060, 0.133), ("as", "Assamese", 265_063, 0.165),
    ("or", "Odia", 265_063, 0.170), ("kn", "Kannada", 265_063, 0.174),
    ("ml", "Malayalam", 265_864, 0.184), ("rn", "Kirundi", 318_189, 0.203),
    ("nso", "Northern Sotho", 915_051, 0.242), ("tn", "Setswana", 915_054, 0.248),
    ("lg", "Luganda", 915_021, 0.249), ("rw", "Kinyarwanda", 915_043, 0.263),
    ("ts", "Xitsonga", 915_044, 0.264), ("sn", "Shona", 865_056, 0.266),
    ("xh", "Xhosa", 915_058, 0.268), ("zu", "Zulu", 915_061, 0.278),
    ("ny", "Chichewa", 915_063, 0.287), ("ig", "Igbo", 950_097, 0.343),
    ("yo", "Yoruba", 918_416, 0.372), ("ne", "Nepali", 315_754, 0.415),
    ("pa", "Punjabi", 339_210, 0.551), ("gu", "Gujarati", 347_499, 0.591),
    ("sw", "Swahili", 1_114_455, 0.591), ("mr", "Marathi", 417_269, 0.702),
    ("bn", "Bengali", 428_843, 0.877), ("ta", "Tamil", 410_633, 0.974),
    ("te", "Telugu", 573_364, 1.404), ("ur", "Urdu", 855_756, 2.020),
    ("vi", "Vietnamese", 1_667_306, 3.267), ("code", "Code", 2_707_724, 4.56),
    ("hi", "Hindi", 1_543_441, 4.628), ("zh", "Chinese", 3_560_556, 4.834),
    ("id", "Indonesian", 2_627_392, 4.852), ("ar", "Arabic", 2_148_955, 4.926),
    ("fr", "French", 5_055_942, 5.842), ("pt", "Portuguese", 3_562_772, 6.456),
    ("es", "Spanish", 5_151_349, 7.975), ("en", "English", 31_495_184, 39.246),
]
# BLOOMZ upsampled code from its 4.56% byte share (xmtf xp3capmixnewcodelong_train.txt).
CODE_BLOOMZ_WEIGHT = 5.93

XP3_LANGUAGES: dict[str, Language] = {
    code: Language(code, name, samples, pct, CODE_BLOOMZ_WEIGHT if code == "code" else pct)
    for code, name, samples, pct in _XP3_TABLE
}
XP3_TOTAL_SAMPLES = 78_883_588

# The 13 training clusters of the xP3 card (bigscience prepare_xp3_train.py TRAIN_DATASETS).
# Dataset ids are HF ids, with the config after a slash where xP3 trained on one config only.
CLUSTERS: dict[str, tuple[str, ...]] = {
    "code_misc": ("codeparrot/codecomplex", "teven/code_docstring_corpus", "great_code",
                  "Fraser/python-state-changes"),
    "closed_book_qa": ("kilt_tasks/hotpotqa", "trivia_qa", "web_questions", "wiki_qa"),
    "extractive_qa": ("adversarial_qa", "clue/cmrc2018", "clue/drcd", "duorc", "quoref",
                      "super_glue/record", "ropes", "squad_v2", "xquad", "mlqa", "tydiqa"),
    "multiple_choice_qa": ("ai2_arc", "clue/c3", "cos_e", "cosmos_qa", "dream",
                           "super_glue/multirc", "openbookqa", "piqa", "quail", "quarel",
                           "quartz", "qasc", "race", "sciq", "social_i_qa", "wiki_hop", "wiqa",
                           "super_glue/boolq"),
    "paraphrase_identification": ("glue/mrpc", "glue/qqp", "paws", "paws-x"),
    "program_synthesis": ("mbpp", "neural_code_search", "codeparrot/apps",
                          "codeparrot/github-jupyter-text-code-pairs",
                          "codeparrot/xlcost-text-to-code", "code_contests",
                          "deepmind/code_contests"),
    "structure_to_text": ("common_gen", "wiki_bio"),
    "sentiment": ("amazon_polarity", "app_reviews", "imdb", "rotten_tomatoes", "yelp_review_full"),
    "simplification": ("GEM/BiSECT",),
    "summarization": ("cnn_dailymail", "gigaword", "multi_news", "samsum", "xsum",
                      "GEM/wiki_lingua", "GEM/xlsum"),
    "topic_classification": ("ag_news", "dbpedia_14", "trec", "clue/tnews", "clue/csl"),
    "translation": ("facebook/flores", "Helsinki-NLP/tatoeba_mt", "allenai/wmt22_african"),
    "word_sense_disambiguation": ("super_glue/wic", "pasinit/xlwic"),
}

# Never trained on (xmtf EVAL_DATASETS_L1/L2 plus the sets xP3 also excluded); §6.4.
HELD_OUT_DATASETS: tuple[str, ...] = (
    "xnli", "xcopa", "xstory_cloze", "Muennighoff/xstory_cloze", "xwinograd",
    "Muennighoff/xwinograd", "anli", "super_glue/cb", "super_glue/rte", "glue/rte",
    "super_glue/copa", "story_cloze", "winogrande", "openai_humaneval", "humaneval",
    "super_glue/wsc.fixed", "hellaswag", "clue/cluewsc2020",
)

# tfds.text.c4.MC4_LANGUAGES (c4/multilingual:3.0.1), copied to avoid importing TFDS at import.
MC4_LANGUAGES: tuple[str, ...] = (
    "af", "am", "ar", "az", "be", "bg", "bg-Latn", "bn", "ca", "ceb", "co", "cs", "cy", "da", "de",
    "el", "el-Latn", "en", "eo", "es", "et", "eu", "fa", "fi", "fil", "fr", "fy", "ga", "gd", "gl",
    "gu", "ha", "haw", "hi", "hi-Latn", "hmn", "ht", "hu", "hy", "id", "ig", "is", "it", "iw", "ja",
    "ja-Latn", "jv", "ka", "kk", "km", "kn", "ko", "ku", "ky", "la", "lb", "lo", "lt", "lv", "mg",
    "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl", "no", "ny", "pa", "pl", "ps", "pt",
    "ro", "ru", "ru-Latn", "sd", "si", "sk", "sl", "sm", "sn", "so", "sq", "sr", "st", "su", "sv",
    "sw", "ta", "te", "tg", "th", "tr", "uk", "ur", "uz", "vi", "xh", "yi", "yo", "zh", "zh-Latn",
    "zu",
)


def normalize_dataset(name: str) -> str:
  """The form a dataset id takes inside xP3 file names: ``/`` and spaces become ``_``."""
  return re.sub(r"[/ ]", "_", name).lower()


DATASET_TO_CLUSTER: dict[str, str] = {
    normalize_dataset(ds): cluster for cluster, names in CLUSTERS.items() for ds in names
}
_HELD_OUT_NORMALIZED = tuple(sorted({normalize_dataset(d) for d in HELD_OUT_DATASETS}))


def _checked(names, known, what: str, valid: str) -> list[str]:
  """``names`` (one or many) as a list, or a ValueError naming the unknown ones."""
  names = [names] if isinstance(names, str) else list(names)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"Unknown {what} {unknown}. {valid}.")
  return names


def check_languages(codes, family: str = "xP3", known=None) -> list[str]:
  """Returns ``codes`` as a list, or raises naming the unknown ones and the valid choices."""
  known = XP3_LANGUAGES if known is None else known
  return _checked(codes, known, f"{family} language(s)", f"Valid codes: {', '.join(sorted(known))}")


def check_clusters(names) -> list[str]:
  """Returns ``names`` as a list, or raises naming the unknown clusters and the 13 valid ones."""
  return _checked(names, CLUSTERS, "xP3 cluster(s)", f"Valid clusters: {', '.join(CLUSTERS)}")


def dataset_from_filename(stem: str, extra: dict[str, str] | None = None) -> str | None:
  """The normalised dataset id at the start of a per-prompt file name, or None if unknown.

  File names are ``xp3_{dataset}_{subset}_{split}_{template}`` with ``/`` and spaces as ``_``, so
  the dataset cannot be split off by position; the longest known id that prefixes the rest wins.
  ``extra`` maps further normalised ids to clusters (for datasets added to a regenerated xP3).
  """
  rest = stem[4:] if stem.startswith("xp3_") else stem
  rest = rest.lower()
  known = {**DATASET_TO_CLUSTER, **{normalize_dataset(k): v for k, v in (extra or {}).items()}}
  candidates = [d for d in (*known, *_HELD_OUT_NORMALIZED) if rest == d or rest.startswith(d + "_")]
  return max(candidates, key=len) if candidates else None


def cluster_of(dataset: str, extra: dict[str, str] | None = None) -> str | None:
  """The training cluster of a (normalised) dataset id; None for held-out or unknown ids."""
  extra = {normalize_dataset(k): v for k, v in (extra or {}).items()}
  return extra.get(dataset, DATASET_TO_CLUSTER.get(dataset))


def held_out_match(name: str) -> str | None:
  """The held-out eval dataset a task/dataset name refers to, if any (whole-token match)."""
  lowered = name.lower()
  for d in sorted(_HELD_OUT_NORMALIZED, key=len, reverse=True):  # most specific first
    if re.search(rf"(^|[^a-z0-9]){re.escape(d)}($|[^a-z0-9])", lowered):
      return d
  return None
