"""`xmtf eval` offline: the bundled suite needs no network, a remote vocabulary fails in one line."""

from pathlib import Path

import pytest

import gin
from tasks import heldout
from xmtf_pipeline import cli


@pytest.fixture(autouse=True)
def clean_gin():
  yield
  gin.clear_config()


def test_bundled_suite_without_data_dir_never_touches_the_hub(monkeypatch):
  import datasets
  load = datasets.load_dataset

  def local_only(path, *args, **kwargs):
    assert path in ("json", "parquet", "csv"), f"went to the hub for {path}"
    return load(path, *args, **kwargs)

  monkeypatch.setattr(datasets, "load_dataset", local_only)
  data_dir = heldout.suite_data_dir("heldout_bundled", None)
  for dataset, config, _ in heldout.resolve_suite("heldout_bundled"):
    assert heldout.load_rows(dataset, config, data_dir, max_examples=2)
  # Other suites keep the hub (or DATA_DIR): the bundled rows are excerpts, not whole splits.
  assert heldout.suite_data_dir("heldout", None) is None
  assert heldout.suite_data_dir("heldout_bundled", "/mine") == "/mine"


def test_unreadable_remote_vocabulary_is_one_line_with_the_fix(tmp_path, monkeypatch, capsys):
  # A scheme TF has no file system for fails the same way as GCS offline, without a network.
  monkeypatch.setenv("MT5_SPM_PATH", "xmtf-no-such-scheme://bucket/sentencepiece.model")
  rc = cli.main(["eval", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/eval.gin",
                 f'--gin.CHECKPOINT_PATH="{tmp_path}/ckpt"', f'--gin.EVAL_OUTPUT_DIR="{tmp_path}"',
                 '--gin.MIXTURE_OR_TASK_NAME="heldout_bundled"'])
  err = capsys.readouterr().err
  assert rc == 2
  assert "Cannot read the SentencePiece model xmtf-no-such-scheme://" in err, err
  assert "MT5_SPM_PATH" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """An HF folder made by `xmtf export-hf` from a tiny checkpoint trained with the sample
  vocabulary: config.json, model.safetensors, spiece.model, tokenizer_config.json."""
  from interop_testlib import save_our_checkpoint
  root = tmp_path_factory.mktemp("hf")
  ckpt, _, _ = save_our_checkpoint(str(root / "run"))
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(root / "hf")]) == 0
  return root / "hf"


@pytest.fixture
def no_default_vocabulary(monkeypatch):
  """mT5's GCS file and MT5_SPM_PATH are unreachable: using either fails at once, offline."""
  from tasks import vocab
  monkeypatch.delenv(vocab.MT5_SPM_ENV, raising=False)
  monkeypatch.setattr(vocab, "MT5_SPM_GCS", "xmtf-no-such-scheme://t5-data/sentencepiece.model")


def test_hf_folder_evaluates_offline_with_its_own_tokenizer(hf_dir, tmp_path, capsys,
                                                            no_default_vocabulary):
  rc = cli.main(["eval", "--checkpoint", str(hf_dir), "--suite", "heldout_bundled",
                 "--output_dir", str(tmp_path / "eval"), "--max_examples", "1"])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  lines = [line for line in captured.out.splitlines() if line.startswith("Vocabulary: ")]
  assert lines == [f"Vocabulary: {hf_dir}/spiece.model (the checkpoint's own; 100 extra_ids "
                   "declared in the folder's tokenizer_config.json)"], captured.out
  assert f"Model: {hf_dir}/config.json" in captured.out
  assert (tmp_path / "eval" / "results.md").is_file()


def test_explicit_vocabulary_wins_over_the_folders_and_says_so(hf_dir, tmp_path, capsys,
                                                              no_default_vocabulary):
  from tasks import vocab
  rc = cli.main(["eval", "--checkpoint", str(hf_dir), "--suite", "copa", "--max_examples", "1",
                 "--output_dir", str(tmp_path / "eval"), "--spm_model", str(vocab.SAMPLE_SPM),
                 "--data_dir", str(heldout.BUNDLED_DIR)])
  out = capsys.readouterr().out
  assert rc == 0, out
  line = next(line for line in out.splitlines() if line.startswith("Vocabulary: "))
  assert line.startswith(f"Vocabulary: {vocab.SAMPLE_SPM} (set by --spm_model")
  assert line.endswith(f"it wins over the checkpoint's own {hf_dir}/spiece.model)"), line


def test_infer_on_the_hf_folder_uses_its_tokenizer(hf_dir, tmp_path, capsys,
                                                   no_default_vocabulary):
  import json
  src = tmp_path / "prompts.jsonl"
  src.write_text(json.dumps({"inputs": "Is the sky blue?", "choices": ["Yes", "No"]}) + "\n")
  rc = cli.main(["infer", "--checkpoint", str(hf_dir), "--input_file", str(src), "--mode",
                 "score", "--output_dir", str(tmp_path)])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert f"Vocabulary: {hf_dir}/spiece.model (the checkpoint's own" in out
  row = json.loads((tmp_path / "prompts-score.jsonl-00000-of-00001").read_text())
  assert row["prediction"] in ("Yes", "No")


def test_vocabulary_bigger_than_the_embeddings_is_one_line(hf_dir, tmp_path, capsys,
                                                           no_default_vocabulary):
  """400 pieces + the declared 100 extra ids = 500 ids, for a model with 450 embeddings."""
  import json
  import shutil
  small = tmp_path / "hf450"
  shutil.copytree(hf_dir, small)
  config = json.loads((small / "config.json").read_text())
  (small / "config.json").write_text(json.dumps({**config, "vocab_size": 450}))
  rc = cli.main(["eval", "--checkpoint", str(small), "--suite", "copa",
                 "--output_dir", str(tmp_path / "eval"), "--data_dir", str(heldout.BUNDLED_DIR)])
  err = capsys.readouterr().err
  assert rc == 2
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
  assert "500 ids (400 pieces + 100 extra ids)" in err and "only 450 embeddings" in err, err


def test_hf_folder_extra_ids_without_tokenizer_config(hf_dir, tmp_path, no_default_vocabulary):
  """No tokenizer_config.json: the folder's spiece.model decides. mT5's layout (sentinels in the
  file; config.json's vocab_size = pieces rounded up, e.g. 250,112 for 250,100) gets 0 extra
  ids, a file without sentinels T5's 100; both fit config.json's 512 embeddings here."""
  import shutil

  import tasks_testlib

  from tasks import vocab
  from xmtf_pipeline import evaluation
  from xmtf_pipeline.interop import hf_import, restore
  folder = tmp_path / "hf"
  shutil.copytree(hf_dir, folder)
  (folder / "tokenizer_config.json").unlink()
  config = hf_import.t5_config_from_hf(hf_import.read_config(str(folder)))
  for sentinels, extra in ((False, 100), (True, 0)):
    if sentinels:
      tasks_testlib.spm_with_sentinels(folder / "spiece.model")
    found = restore.checkpoint_vocabulary(str(folder))
    assert found == (str(folder / "spiece.model"), None, "")
    try:
      vocab.use_checkpoint_vocabulary(*found)
      v = vocab.mt5_vocabulary()
      assert (v.vocab_size, v.extra_ids) == (500, extra)
      evaluation.check_vocabulary(v, config)  # 500 <= 512
    finally:
      vocab.use_checkpoint_vocabulary(None)


@pytest.mark.parametrize("extra", [100, 0])
def test_round_trip_hf_import_eval_export_keeps_the_tokenizer(hf_dir, tmp_path, capsys,
                                                               no_default_vocabulary, extra):
  """HF folder -> import-hf -> eval (no model or vocabulary flags) -> export-hf: every step
  uses the folder's spiece.model with the extra ids its tokenizer_config.json declares (0 is
  not what the file alone implies: 500 pieces, no sentinels)."""
  import json
  import shutil
  if extra != 100:
    hf_dir = Path(shutil.copytree(hf_dir, tmp_path / "hf"))
    tok = json.loads((hf_dir / "tokenizer_config.json").read_text())
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({**tok, "extra_ids": extra}))
  ours = tmp_path / "ours"
  assert cli.main(["import-hf", "--hf_dir", str(hf_dir), "--output_dir", str(ours)]) == 0
  rc = cli.main(["eval", "--checkpoint", str(ours / "checkpoint_0"), "--suite", "copa",
                 "--max_examples", "1", "--data_dir", str(heldout.BUNDLED_DIR),
                 "--output_dir", str(tmp_path / "eval")])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert f"Model: {ours}/config.gin" in out
  line = next(line for line in out.splitlines() if line.startswith("Vocabulary: "))
  assert line.startswith(f"Vocabulary: {ours}/spiece.model (the checkpoint's own; {extra} extra"), line
  assert cli.main(["export-hf", "--checkpoint_dir", str(ours / "checkpoint_0"), "--output_dir",
                   str(tmp_path / "again")]) == 0
  tok = json.loads((tmp_path / "again" / "tokenizer_config.json").read_text())
  assert tok["extra_ids"] == extra
  assert (tmp_path / "again" / "spiece.model").read_bytes() == (hf_dir / "spiece.model").read_bytes()


def test_a_run_of_the_sample_task_brings_its_vocabulary(tmp_path, no_default_vocabulary):
  """`xmtf eval --checkpoint <demo run>/checkpoint_N` needs no vocabulary setting: as export-hf,
  eval takes the run's task's vocabulary from its config.gin (the demo trains on xp3_sample,
  whose sample model is not mT5's). A task on mT5's default vocabulary leaves the usual order."""
  from tasks import vocab
  from xmtf_pipeline.interop import restore
  for task, expected in (("xp3_sample", vocab.SAMPLE_SPM), ("xp3_bm", None)):
    run = tmp_path / task
    run.mkdir()
    (run / "config.gin").write_text(f"MIXTURE_OR_TASK_NAME = '{task}'\n"
                                    "MIXTURE_OR_TASK_MODULE = 'tasks.xp3'\n")
    found = restore.checkpoint_vocabulary(str(run / "checkpoint_40"))
    if expected is None:
      assert found is None
      continue
    assert found is not None and Path(found[0]) == Path(expected), found
    assert f"task '{task}'" in found[2] and "config.gin" in found[2]
    try:
      line = restore.choose_vocabulary(str(run / "checkpoint_40"))
      assert "xp3_sample.model (the checkpoint's own" in line, line
      assert vocab.mt5_vocabulary().vocab_size == vocab.sample_vocabulary().vocab_size
    finally:
      vocab.use_checkpoint_vocabulary(None)
