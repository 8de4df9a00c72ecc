"""tasks.xp3 and tasks.sources: registration, layouts, splits, sharding, determinism, the sample."""

import json
import math

import numpy as np
import pytest
import seqio
import tasks_testlib as T
import tensorflow as tf

import gin
import tasks.mc4
import tasks.xp3
from tasks import languages, registry, xp3
from tasks.sources import HFDatasetsSource, JsonlSource

LENGTHS = {"inputs": 32, "targets": 16}


@pytest.fixture
def xp3_env(tmp_path, monkeypatch):
  """XP3_DIR / XP3MT_DIR / P3_DIR on tmp roots, tiny vocabulary, gin cleared afterwards."""
  T.use_tiny_vocab(monkeypatch)
  roots = {}
  for env in ("XP3_DIR", "XP3MT_DIR", "P3_DIR"):
    roots[env] = tmp_path / env.lower()
    roots[env].mkdir()
    monkeypatch.setenv(env, str(roots[env]))
  yield roots
  gin.clear_config()


def test_registration_does_no_io(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f"I/O at registration: {args}")

  for name in ("exists", "isdir", "glob", "listdir", "stat", "GFile"):
    monkeypatch.setattr(tf.io.gfile, name, refuse)
  monkeypatch.setenv("XP3_DIR", "/nonexistent")
  monkeypatch.setenv("MC4_DIR", "/nonexistent")
  monkeypatch.setenv("MT5_SPM_PATH", "/nonexistent.model")
  xp3.register_all()
  tasks.mc4.register_all()


def test_every_task_and_mixture_is_registered_once():
  names = set(seqio.TaskRegistry.names())
  for lang in languages.XP3_LANGUAGES:
    for prefix in ("xp3", "xp3_hf", "xp3mt", "xp3mt_hf"):
      assert f"{prefix}_{lang}" in names
  assert {"p3", "p3_hf"} <= names
  assert {f"xp3_sample_{lang}" for lang in xp3.SAMPLE_LANGUAGES} <= names
  assert {tasks.mc4.task_name(lang) for lang in languages.MC4_LANGUAGES} <= names
  mixtures = set(seqio.MixtureRegistry.names())
  assert {"xp3", "xp3mt", "xp3_hf", "xp3_bloomz", "xp3_proportional", "xp3_temperature",
          "xp3_sample", "mc4"} <= mixtures
  before = (len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names()))
  xp3.register_all()  # idempotent: same names, replaced in place
  tasks.mc4.register_all()
  assert (len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names())) == before
  assert seqio.get_mixture_or_task("xp3_fr").source is not None


def test_foreign_registration_is_never_overwritten():
  seqio.TaskRegistry.add("foreign_task_for_test", source=seqio.FunctionDataSource(
      lambda split, shuffle_files: tf.data.Dataset.from_tensors({"x": "a"}), splits=["train"]),
      output_features={})
  try:
    with pytest.raises(ValueError, match="registered outside this package"):
      registry.add_task("foreign_task_for_test", source=None, output_features={})
  finally:
    seqio.TaskRegistry.remove("foreign_task_for_test")


def _first(task_name, split="train"):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(LENGTHS, split=split, shuffle=False)
  return next(ds.as_numpy_iterator())


def test_every_language_task_reads_the_merged_layout(xp3_env):
  langs = list(languages.XP3_LANGUAGES)
  T.merged_root(xp3_env["XP3_DIR"], {lang: 3 for lang in langs})
  T.merged_root(xp3_env["XP3MT_DIR"], {lang: 3 for lang in langs})
  T.merged_root(xp3_env["P3_DIR"], {"en": 3})
  vocabulary = seqio.get_mixture_or_task("xp3_en").output_features["inputs"].vocabulary
  for name in [f"{p}_{lang}" for p in ("xp3", "xp3mt") for lang in langs] + ["p3"]:
    task = seqio.get_mixture_or_task(name)
    lang = "en" if name == "p3" else name.split("_", 1)[1]
    assert task.output_features["targets"].vocabulary == vocabulary and task.splits == (
        "train", "validation")
    # Line 0 is validation (1 in 100), so train starts at line 1.
    assert T.texts(task.source.get_dataset("train", shuffle=False)) == [f"{lang} in 1",
                                                                        f"{lang} in 2"], name
  for name in ("xp3_code", "xp3mt_zu", "p3"):  # the full preprocessing chain
    ex = _first(name)
    for key in ("inputs", "targets"):
      assert ex[key].dtype == np.int32 and ex[key][-1] == 1 and len(ex[key]) <= LENGTHS[key]
    assert vocabulary.decode(ex["targets"][:-1].tolist()) == ex["targets_pretokenized"].decode()


def test_standard_mixtures_yield_features(xp3_env):
  T.merged_root(xp3_env["XP3_DIR"], {lang: 4 for lang in languages.XP3_LANGUAGES})
  for name in ("xp3", "xp3mt", "xp3_hf", "xp3_bloomz", "xp3_proportional", "xp3_temperature"):
    mix = seqio.get_mixture_or_task(name)
    assert len(mix.tasks) == 46 and all(mix.get_rate(t) > 0 for t in mix.tasks)
  ds = seqio.get_mixture_or_task("xp3").get_dataset(LENGTHS, split="train", shuffle=True, seed=1,
                                                    num_epochs=1)
  for ex in ds.take(5).as_numpy_iterator():
    assert set(ex) == {"inputs", "targets"} and ex["inputs"][-1] == 1


def test_per_prompt_fallback_and_merged_preferred(xp3_env):
  root = xp3_env["XP3_DIR"]
  T.prompt_root(root, "sw", {"xp3_paws-x_sw_train_Meaning": 4, "xp3_ag_news_None_train_x": 3})
  task = seqio.get_mixture_or_task("xp3_sw")
  got = T.pretokenized(task.get_dataset(None, split="train", shuffle=False))
  # Files are interleaved line by line; line 0 of each file is validation (1 in 100).
  assert sorted(got) == sorted([f"sw[xp3_paws-x_sw_train_Meaning] in {i}" for i in (1, 2, 3)]
                               + [f"sw[xp3_ag_news_None_train_x] in {i}" for i in (1, 2)])
  T.write_jsonl(root / "sw" / "merged_sw.jsonl", T.rows("sw", 3, tag="M"))
  got = T.pretokenized(task.get_dataset(None, split="train", shuffle=False))
  assert got == ["swM in 1", "swM in 2"]


def test_old_dumps_with_list_targets(xp3_env):
  T.write_jsonl(xp3_env["XP3_DIR"] / "fr" / "merged_fr.jsonl",
                [{"inputs": "q0", "targets": ["a0"]}, {"inputs": "q1", "targets": ["a1"]}])
  got = T.pretokenized(seqio.get_mixture_or_task("xp3_fr").get_dataset(None, shuffle=False),
                       "targets")
  assert got == ["a1"]


def test_validation_holdout_is_deterministic_and_disjoint(xp3_env):
  T.merged_root(xp3_env["XP3_DIR"], {"yo": 25})
  source = seqio.get_mixture_or_task("xp3_yo").source
  all_rows = {f"yo in {i}" for i in range(25)}
  assert T.texts(source.get_dataset("validation", shuffle=False)) == ["yo in 0"]  # 1 in 100
  gin.parse_config("tasks.xp3.validation_holdout.every = 5")
  val = T.texts(source.get_dataset("validation", shuffle=False))
  train = T.texts(source.get_dataset("train", shuffle=False))
  assert val == [f"yo in {i}" for i in (0, 5, 10, 15, 20)]
  assert set(val).isdisjoint(train) and set(val) | set(train) == all_rows
  gin.parse_config("tasks.xp3.validation_holdout.max_examples = 2")
  assert T.texts(source.get_dataset("validation", shuffle=False)) == ["yo in 0", "yo in 5"]
  assert len(T.texts(source.get_dataset("train", shuffle=False))) == 20  # capped rows stay out


@pytest.mark.parametrize("layout", ["merged", "per_prompt"])
def test_two_shards_partition_the_data(xp3_env, layout):
  root = xp3_env["XP3_DIR"]
  if layout == "merged":  # one file: sharded by line
    T.merged_root(root, {"ta": 41})
  else:  # three files: sharded by file
    T.prompt_root(root, "ta", {"xp3_imdb_None_train_a": 7, "xp3_imdb_None_train_b": 9,
                               "xp3_trec_None_train_c": 11})
  task = seqio.get_mixture_or_task("xp3_ta")
  full = T.pretokenized(task.get_dataset(None, shuffle=False))
  shards = [T.pretokenized(task.get_dataset(None, shuffle=True, seed=5,
                                            shard_info=seqio.ShardInfo(i, 2))) for i in (0, 1)]
  assert shards[0] and shards[1]
  assert set(shards[0]).isdisjoint(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(full)


def test_hf_datasets_source_over_local_files(xp3_env):
  T.merged_root(xp3_env["XP3_DIR"], {"ur": 12, "bn": 5})
  T.merged_root(xp3_env["P3_DIR"], {"en": 4})
  for lang in ("ur", "bn"):
    hf, js = (seqio.get_mixture_or_task(f"xp3{b}_{lang}") for b in ("_hf", ""))
    assert isinstance(hf.source, HFDatasetsSource) and isinstance(js.source, JsonlSource)
    for split in ("train", "validation"):
      a = T.pretokenized(hf.get_dataset(LENGTHS, split=split, shuffle=False))
      b = T.pretokenized(js.get_dataset(LENGTHS, split=split, shuffle=False))
      assert a == b and a
  shard = [T.pretokenized(seqio.get_mixture_or_task("xp3_hf_ur").get_dataset(
      None, shuffle=False, shard_info=seqio.ShardInfo(i, 2))) for i in (0, 1)]
  assert sorted(shard[0] + shard[1]) == sorted(f"ur in {i}" for i in range(1, 12))
  assert T.pretokenized(seqio.get_mixture_or_task("p3_hf").get_dataset(None, shuffle=False)) == [
      "en in 1", "en in 2", "en in 3"]


def test_same_seed_same_order_and_restorable_position(tmp_path):
  # Two sample tasks keep this fast; the full xp3_sample mixture goes through the same code.
  mix = seqio.Mixture("test_mix", [("xp3_sample_en", 2.0), ("xp3_sample_zh", 1.0)])
  lengths = {"inputs": 64, "targets": 16}

  def stream(seed):
    ds = mix.get_dataset(lengths, split="train", shuffle=True, seed=seed, num_epochs=None)
    return seqio.EncDecFeatureConverter(pack=True)(ds, lengths).batch(4)

  def take(it, n):
    return [next(it)["encoder_input_tokens"].numpy() for _ in range(n)]

  a, b = take(iter(stream(3)), 5), take(iter(stream(3)), 5)
  assert all((x == y).all() for x, y in zip(a, b))
  assert not all((x == y).all() for x, y in zip(a, take(iter(stream(4)), 5)))
  # The trainer checkpoints the tf.data iterator: every stage must be serialisable.
  it = iter(stream(3))
  take(it, 3)
  ckpt = tf.train.Checkpoint(iterator=it)
  path = ckpt.write(str(tmp_path / "iterator"))
  expected = take(it, 3)
  restored = iter(stream(3))
  tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
  assert all((x == y).all() for x, y in zip(expected, take(restored, 3)))


def test_bundled_sample_layout_and_provenance():
  folders = sorted(p.name for p in xp3.SAMPLE_DIR.iterdir() if p.is_dir())
  assert folders == sorted(xp3.SAMPLE_LANGUAGES) and "code" in folders and len(folders) >= 8
  total, size = 0, 0
  for lang in folders:
    path = xp3.SAMPLE_DIR / lang / f"merged_{lang}.jsonl"
    size += path.stat().st_size
    for line in path.read_text(encoding="utf-8").splitlines():
      record = json.loads(line)
      assert set(record) == {"inputs", "targets"}
      assert all(isinstance(v, str) and v.strip() for v in record.values())
      total += 1
  assert 300 <= total <= 6000
  size += T.vocab.SAMPLE_SPM.stat().st_size
  assert size < 1_000_000
  readme = (xp3.SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
  for needle in ("spacy==3.8.18", "pycld2==0.42", "MIT", "Apache-2.0", "make_xp3_sample.py"):
    assert needle in readme


def test_sample_mixture_fits_the_tiny_model():
  mix = seqio.get_mixture_or_task("xp3_sample")
  assert {t.name for t in mix.tasks} == {f"xp3_sample_{lang}" for lang in xp3.SAMPLE_LANGUAGES}
  for split in ("train", "validation"):
    n = 0
    for ex in mix.get_dataset({"inputs": 128, "targets": 32}, split=split, shuffle=False,
                              num_epochs=1).as_numpy_iterator():
      assert ex["inputs"].max() < 500 and ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
      n += 1
    assert n > 0
  task = seqio.get_mixture_or_task("xp3_sample_code")
  lines = sum(1 for _ in open(xp3.SAMPLE_DIR / "code" / "merged_code.jsonl", encoding="utf-8"))
  assert task.num_input_examples("validation") == math.ceil(lines / 10)
  assert task.num_input_examples("train") == lines - math.ceil(lines / 10)
  assert task.metric_fns and task.metric_fns[0](["Python", "x"], ["Python", "y"]) == {
      "exact_match": 50.0}


@pytest.mark.parametrize("style", ["classic", "dynamic_registration"])
def test_modules_import_from_a_t5x_style_gin_file(style, monkeypatch):
  monkeypatch.delenv("XP3_DIR", raising=False)
  config = {
      "classic": "import tasks.xp3\nimport tasks.mc4\ntasks.xp3.xp3_dir.path = '/data/xP3'\n"
                 "tasks.vocab.mt5_vocabulary_config.path = '/data/mt5.model'\n"
                 "MIXTURE_OR_TASK_NAME = 'xp3'",
      "dynamic_registration": "from __gin__ import dynamic_registration\nfrom tasks import xp3\n"
                              "from tasks import vocab\nxp3.xp3_dir.path = '/data/xP3'\n"
                              "vocab.mt5_vocabulary_config.path = '/data/mt5.model'",
  }[style]
  try:
    gin.parse_config(config)
    assert xp3.xp3_dir() == "/data/xP3"
    assert T.vocab.mt5_vocabulary_config() == ("/data/mt5.model", 0)
  finally:
    gin.clear_config()
