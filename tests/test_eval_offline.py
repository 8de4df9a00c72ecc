"""`xmtf eval` offline: the bundled suite needs no network, a remote vocabulary fails in one line."""

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
