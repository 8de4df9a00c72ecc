"""tasks.languages: the published tables and the name parsing built on them."""

import pytest
import tasks_testlib  # noqa: F401  (makes `tasks` importable)

from tasks import languages as L


def test_xp3_table_matches_the_card():
  assert len(L.XP3_LANGUAGES) == 46 and "code" in L.XP3_LANGUAGES
  assert sum(x.samples for x in L.XP3_LANGUAGES.values()) == L.XP3_TOTAL_SAMPLES == 78_883_588
  en = L.XP3_LANGUAGES["en"]
  assert en.samples / L.XP3_TOTAL_SAMPLES == pytest.approx(0.3993, abs=5e-5)  # "en = 39.93%"
  # BLOOMZ weights = byte share except code (4.56% of bytes, upsampled to 5.93%); sum ~101.37%.
  assert L.XP3_LANGUAGES["code"].bytes_pct == 4.56 and L.XP3_LANGUAGES["code"].bloomz_weight == 5.93
  assert all(x.bloomz_weight == x.bytes_pct for k, x in L.XP3_LANGUAGES.items() if k != "code")
  assert sum(x.bloomz_weight for x in L.XP3_LANGUAGES.values()) == pytest.approx(101.37, abs=0.01)


def test_clusters_and_held_out_sets():
  assert len(L.CLUSTERS) == 13
  assert L.DATASET_TO_CLUSTER["paws-x"] == "paraphrase_identification"
  assert L.DATASET_TO_CLUSTER["super_glue_wic"] == "word_sense_disambiguation"
  # No held-out evaluation set is a training dataset.
  for name in L.HELD_OUT_DATASETS:
    assert L.normalize_dataset(name) not in L.DATASET_TO_CLUSTER, name
  assert len(L.MC4_LANGUAGES) == 107 and "zh-Latn" in L.MC4_LANGUAGES


@pytest.mark.parametrize("stem, dataset, cluster", [
    ("xp3_paws-x_es_train_Meaning", "paws-x", "paraphrase_identification"),
    ("xp3_paws_labeled_final_train_Meaning", "paws", "paraphrase_identification"),
    ("xp3_super_glue_wic_train_question-context", "super_glue_wic", "word_sense_disambiguation"),
    ("xp3_GEM_xlsum_english_train_TLDR", "gem_xlsum", "summarization"),
    ("xp3_ag_news_None_train_classify", "ag_news", "topic_classification"),
    ("xp3_xnli_en_train_GPT-3_style", "xnli", None),
    ("xp3_super_glue_cb_train_can_we_infer", "super_glue_cb", None),
    ("xp3_my_new_dataset_None_train_x", None, None),
])
def test_dataset_parsed_from_per_prompt_file_names(stem, dataset, cluster):
  assert L.dataset_from_filename(stem) == dataset
  assert (L.cluster_of(dataset) if dataset else None) == cluster


def test_extra_clusters_for_unknown_datasets():
  extra = {"my_new_dataset": "sentiment"}
  assert L.dataset_from_filename("xp3_my_new_dataset_None_train_x", extra) == "my_new_dataset"
  assert L.cluster_of("my_new_dataset", extra) == "sentiment"


@pytest.mark.parametrize("name, hit", [
    ("xp3_en.xnli_en_train_GPT_3_style", "xnli"), ("my_super_glue_cb_task", "super_glue_cb"),
    ("winogrande_xl", "winogrande"), ("openai_humaneval", "openai_humaneval"),
    ("xp3_en", None), ("xp3_sample_en", None), ("mc4_en", None),
    ("xp3_en.super_glue_wic_train", None), ("xp3_en.xstory_cloze_x", "xstory_cloze"),
])
def test_held_out_names_match_whole_tokens(name, hit):
  assert L.held_out_match(name) == hit


def test_unknown_languages_and_clusters_name_the_valid_choices():
  with pytest.raises(ValueError, match=r"Unknown xP3 language\(s\) \['klingon'\].*Valid codes:.*zu"):
    L.check_languages(["en", "klingon"])
  with pytest.raises(ValueError, match=r"Unknown xP3 cluster\(s\) \['poetry'\].*summarization"):
    L.check_clusters(["poetry"])
