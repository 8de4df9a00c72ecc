"""tasks.mixtures: rate schemes, realised rates (±2%), ablations, mC4 mixing, held-out guard."""

import numpy as np
import pytest
import seqio
import tasks_testlib as T

import gin
import tasks.mc4  # noqa: F401  (registers mc4_* for mixing)
import tasks.xp3  # noqa: F401
from tasks import languages, mixtures, registry, xp3
from tasks.sources import JsonlSource
from xmtf_pipeline import gin_config

LANGS = {"en": 40, "fr": 30, "sw": 20, "code": 25}


@pytest.fixture
def env(tmp_path, monkeypatch):
  T.use_tiny_vocab(monkeypatch)
  monkeypatch.setenv("XP3_DIR", str(T.merged_root(tmp_path / "xp3", LANGS)))
  yield tmp_path
  gin.clear_config()


def test_rate_schemes():
  en = languages.XP3_LANGUAGES["en"].samples
  assert mixtures.language_rate("code", "bloomz") == 5.93
  assert mixtures.language_rate("en", "bloomz") == 39.246
  assert mixtures.language_rate("en", "proportional") == en
  assert mixtures.language_rate("en", "proportional", cap=1e6) == 1e6
  assert mixtures.language_rate("en", "temperature", alpha=0.3) == pytest.approx(en ** 0.3)
  with pytest.raises(ValueError, match=r"Unknown rate scheme 'uniform'.*bloomz"):
    mixtures.language_rate("en", "uniform")
  with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
    mixtures.language_rate("en", "temperature", alpha=0)


def test_gin_selects_the_scheme_of_the_xp3_mixture(env):
  rates = mixtures.expected_rates("xp3")
  assert rates["xp3_code"] == pytest.approx(5.93 / 101.372, rel=1e-4)
  gin.parse_config("tasks.mixtures.xp3_rates.scheme = 'temperature'")
  rates = mixtures.expected_rates("xp3")
  tw, en = (languages.XP3_LANGUAGES[k].samples for k in ("tw", "en"))
  assert rates["xp3_en"] / rates["xp3_tw"] == pytest.approx((en / tw) ** 0.3)
  bloomz = mixtures.expected_rates("xp3_bloomz")  # fixed scheme, unaffected
  assert bloomz["xp3_code"] == pytest.approx(5.93 / 101.372, rel=1e-4)


@pytest.mark.parametrize("scheme", ["bloomz", "temperature"])
def test_realised_rates_within_two_percent(env, scheme):
  name = mixtures.xp3_ablation(name=f"test_{scheme}", languages=list(LANGS), scheme=scheme)
  mix = seqio.get_mixture_or_task(name)
  realised = mixtures.realised_rates(mix, 4000, seed=3)
  assert mixtures.max_rate_error(mix, realised) < 0.02, mixtures.rate_table(mix, realised)


def test_sample_mixture_rates_are_examples_proportional():
  mix = seqio.get_mixture_or_task("xp3_sample")
  expected = mixtures.expected_rates(mix)
  counts = {t.name: t.num_input_examples("train") for t in mix.tasks}
  assert expected["xp3_sample_en"] == pytest.approx(counts["xp3_sample_en"] / sum(counts.values()))
  realised = mixtures.realised_rates(mix, 3000, seed=0)
  assert mixtures.max_rate_error(mix, realised) < 0.02, mixtures.rate_table(mix, realised)


def test_language_selection_and_custom_rates(env):
  name = mixtures.xp3_ablation(name="test_langs", languages=["en", "fr", "sw"],
                               exclude_languages=["sw"], rates={"fr": 3.0, "xp3mt_en": 1.0})
  rates = mixtures.expected_rates(name)
  assert set(rates) == {"xp3_en", "xp3_fr", "xp3mt_en"}
  assert rates["xp3_fr"] / rates["xp3_en"] == pytest.approx(3.0 / 39.246)
  name = mixtures.xp3_ablation(name="test_drop", languages=["en", "fr"], rates={"fr": 0})
  assert set(mixtures.expected_rates(name)) == {"xp3_en"}


def test_cluster_ablation_reads_per_prompt_files(tmp_path, monkeypatch):
  T.use_tiny_vocab(monkeypatch)
  root = T.prompt_root(tmp_path, "en", {
      "xp3_ag_news_None_train_classify": 30, "xp3_trec_None_train_q": 10,
      "xp3_paws_labeled_final_train_Meaning": 20, "xp3_xnli_en_train_GPT-3_style": 5})
  monkeypatch.setenv("XP3_DIR", str(root))
  name = mixtures.xp3_ablation(name="test_topic", languages=["en"],
                               clusters=["topic_classification"])
  rates = mixtures.expected_rates(name)  # the language's rate shared by lines: 30 : 10
  assert rates == pytest.approx({"xp3_en.ag_news_None_train_classify": 0.75,
                                 "xp3_en.trec_None_train_q": 0.25})
  realised = mixtures.realised_rates(name, 2000, seed=1)
  assert mixtures.max_rate_error(name, realised) < 0.02
  name = mixtures.xp3_ablation(name="test_no_topic", languages=["en"],
                               exclude_clusters=["topic_classification"])
  # The held-out XNLI file has no training cluster, so it is never selected.
  assert set(mixtures.expected_rates(name)) == {"xp3_en.paws_labeled_final_train_Meaning"}
  T.prompt_root(tmp_path, "en", {"xp3_brand_new_set_None_train_x": 3})
  with pytest.raises(ValueError, match=r"cannot tell the dataset of 1 file.*brand_new_set.*"
                     "extra_dataset_clusters"):
    mixtures.xp3_ablation(name="test_unknown", languages=["en"], clusters=["sentiment"])
  name = mixtures.xp3_ablation(name="test_extra", languages=["en"], clusters=["sentiment"],
                               extra_dataset_clusters={"brand_new_set": "sentiment"})
  assert set(mixtures.expected_rates(name)) == {"xp3_en.brand_new_set_None_train_x"}


def test_cluster_ablation_needs_per_prompt_files(env):
  with pytest.raises(FileNotFoundError, match=r"has no per-prompt files.*merged files do not "
                     "record the dataset"):
    mixtures.xp3_ablation(name="test_merged_only", languages=["en"], clusters=["sentiment"])


def test_mixing_xp3_with_mc4_at_a_fraction(env, tmp_path, monkeypatch):
  T.write_jsonl(tmp_path / "mc4" / "c4-en.tfrecord-00000-of-00001.json.gz",
                [{"text": f"document number {i} in English"} for i in range(30)])
  T.write_jsonl(tmp_path / "mc4" / "c4-sw.tfrecord-00000-of-00001.json.gz",
                [{"text": f"hati namba {i}"} for i in range(10)])
  monkeypatch.setenv("MC4_DIR", str(tmp_path / "mc4"))
  name = mixtures.xp3_ablation(name="test_mc4mix", languages=["en", "fr"], mc4_fraction=0.25,
                               mc4_languages=["en", "sw"])
  mix = seqio.get_mixture_or_task(name)
  lengths = {"inputs": 32, "targets": 8}  # span corruption needs the lengths
  realised = mixtures.realised_rates(mix, 4000, seed=2, sequence_length=lengths)
  mc4_share = sum(v for k, v in realised.items() if k.startswith("mc4_"))
  assert mc4_share == pytest.approx(0.25, abs=0.02), mixtures.rate_table(mix, realised)
  assert mixtures.max_rate_error(mix, realised) < 0.02


def _held_out_task():
  return registry.add_task(
      "test_custom_xnli_en", source=JsonlSource(lambda: [], description="none"),
      output_features=T.vocab.output_features(T.vocab.mt5_vocabulary()))


def test_held_out_guard_refuses_training_on_eval_sets(env, tmp_path):
  _held_out_task()
  with pytest.raises(mixtures.HeldOutDatasetError, match=r"test_custom_xnli_en \(xnli\).*never "
                     "trains on XNLI"):
    mixtures.xp3_ablation(name="test_guard", languages=["en"],
                          rates={"test_custom_xnli_en": 1.0})
  assert "test_guard" not in seqio.MixtureRegistry.names()
  # A task whose name looks harmless but whose recorded dataset is held out.
  registry.add_task("test_innocent", source=JsonlSource(lambda: []), datasets=("super_glue_cb",),
                    output_features=T.vocab.output_features(T.vocab.mt5_vocabulary()))
  plain = seqio.Mixture("test_plain", [("xp3_en", 1.0), ("test_innocent", 1.0)])
  with pytest.raises(mixtures.HeldOutDatasetError, match=r"test_innocent \(super_glue_cb\)"):
    mixtures.check_no_held_out(plain)
  with pytest.raises(mixtures.HeldOutDatasetError):
    mixtures.TrainingMixture("test_direct", [("xp3_en", 1.0), ("test_innocent", 1.0)])
  # A per-prompt file of a held-out set, registered as a task, is refused too.
  T.prompt_root(tmp_path / "xp3", "sw", {"xp3_xcopa_sw_train_best_option": 3})
  prompt = next(p for p in xp3.register_prompt_tasks("sw") if p.dataset == "xcopa")
  with pytest.raises(mixtures.HeldOutDatasetError, match="xcopa"):
    mixtures.xp3_ablation(name="test_guard2", languages=["en"], rates={prompt.name: 1.0})
  for name in ("xp3", "xp3mt", "xp3_sample", "mc4"):
    mixtures.check_no_held_out(name)


def test_ablation_bad_input(env):
  with pytest.raises(ValueError, match=r"Unknown xP3 language\(s\) \['xx'\]"):
    mixtures.xp3_ablation(name="t", languages=["en", "xx"])
  with pytest.raises(ValueError, match=r"Unknown xP3 language\(s\) \['de'\]"):
    mixtures.xp3_ablation(name="t", exclude_languages=["de"])
  with pytest.raises(ValueError, match=r"Unknown xP3 cluster\(s\) \['jokes'\]"):
    mixtures.xp3_ablation(name="t", clusters=["jokes"])
  with pytest.raises(ValueError, match=r"rate for 'fr' is -1.0; rates must be numbers >= 0"):
    mixtures.xp3_ablation(name="t", languages=["en", "fr"], rates={"fr": -1.0})
  with pytest.raises(ValueError, match=r"all rates are zero"):
    mixtures.xp3_ablation(name="t", languages=["en", "fr"], rates={"en": 0, "fr": 0.0})
  with pytest.raises(ValueError, match=r"rates key 'nonexistent_task' is neither"):
    mixtures.xp3_ablation(name="t", languages=["en"], rates={"nonexistent_task": 1.0})
  with pytest.raises(ValueError, match=r"mc4_fraction must be in \[0, 1\)"):
    mixtures.xp3_ablation(name="t", languages=["en"], mc4_fraction=1.0)
  with pytest.raises(ValueError, match=r"no languages left"):
    mixtures.xp3_ablation(name="t", languages=["en"], exclude_languages=["en"])


def test_ablation_from_gin(env):
  gin.parse_config("""
      MIXTURE_OR_TASK_NAME = @tasks.mixtures.xp3_ablation()
      tasks.mixtures.xp3_ablation.name = 'test_gin_ablation'
      tasks.mixtures.xp3_ablation.languages = ['sw', 'code']
      tasks.mixtures.xp3_ablation.scheme = 'proportional'
      tasks.mixtures.xp3_ablation.cap = 1_000_000
  """)
  name = gin_config.evaluate("%MIXTURE_OR_TASK_NAME")  # as T5X resolves the macro
  assert name == "test_gin_ablation"
  rates = mixtures.expected_rates(name)
  assert rates["xp3_sw"] == pytest.approx(1e6 / (1e6 + 1e6))  # both capped at 1,000,000
  ds = seqio.get_mixture_or_task(name).get_dataset({"inputs": 16, "targets": 8}, shuffle=False)
  assert next(ds.as_numpy_iterator())["inputs"].dtype == np.int32
