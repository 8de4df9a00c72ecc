"""interop/restore: a checkpoint's format is decided once, by ``restore.detect``, and every job
(train's INITIAL_CHECKPOINT_PATH, eval, infer, select-checkpoint, export-hf) goes through it.

Restoring into shardings on a mesh is tested on 8 fake devices in test_eval_meshes.py.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from interop_testlib import TINY, export_our_checkpoint, save_our_checkpoint

from xmtf_pipeline import checkpoints, cli
from xmtf_pipeline import params as params_lib
from xmtf_pipeline.interop import hf_import, restore


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
  """The same parameters as our checkpoint, its HF export and that imported as T5X legacy."""
  root = tmp_path_factory.mktemp("formats")
  ckpt, params, hf = export_our_checkpoint(root)
  t5x = hf_import.import_hf(str(hf), str(root / "t5x"))
  return {"ours": ckpt, "hf": str(hf), "t5x-legacy": t5x, "root": root, "params": params}


@pytest.mark.parametrize("fmt", ["ours", "hf", "t5x-legacy"])
def test_detect_names_the_format_and_the_folder_read(formats, fmt):
  path = formats[fmt]
  found = restore.detect(path)
  assert (found.format, found.path) == (fmt, os.path.abspath(path))
  if fmt != "hf":  # MODEL_DIR stands for its newest checkpoint_<step>
    assert restore.detect(os.path.dirname(path)).path == os.path.abspath(path)


def test_a_model_dir_means_its_newest_checkpoint(tmp_path):
  for step in (3, 12):
    save_our_checkpoint(str(tmp_path), step=step, seed=step)
  assert restore.detect(str(tmp_path)) == restore.Checkpoint(
      str(tmp_path), "ours", str(tmp_path / "checkpoint_12"))
  got = restore.restore_params(str(tmp_path), TINY)
  want = save_our_checkpoint(str(tmp_path / "again"), step=12, seed=12)[1]
  for name, value in params_lib.flatten(want).items():
    np.testing.assert_array_equal(np.asarray(params_lib.flatten(got)[name]), value, name)


@pytest.mark.parametrize("fmt", ["ours", "hf", "t5x-legacy"])
def test_restore_params_reads_the_same_weights_from_every_format(formats, fmt):
  got = params_lib.flatten(restore.restore_params(formats[fmt], TINY))
  for name, value in params_lib.flatten(formats["params"]).items():
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(value), name)


def test_params_only_reads_no_optimizer_state(formats):
  """Eval's restore of an HF folder builds no zero Adafactor state; ours leaves the slots on
  disk (both hand back the step only)."""
  from xmtf_pipeline.adafactor import Adafactor
  from xmtf_pipeline.trainer import TrainState
  abstract = jax.eval_shape(lambda: TrainState.create(
      params_lib.init_params(TINY, jax.random.PRNGKey(0)), Adafactor()).state_dict())
  for fmt in ("ours", "hf"):
    state = restore.restore_state(formats[fmt], TINY, abstract, params_only=True)
    assert set(state["state"]) == {"step"}, fmt


@pytest.mark.parametrize("make,flag,wanted", [
    (lambda root: str(root / "missing"), "CHECKPOINT_PATH", "CHECKPOINT_PATH {} does not exist."),
    (lambda root: str(root), "INITIAL_CHECKPOINT_PATH",
     "INITIAL_CHECKPOINT_PATH {} holds no checkpoint_<step> folder (nor a Hugging Face "
     "config.json); point it at a checkpoint directory such as MODEL_DIR/checkpoint_1000.")])
def test_what_is_not_a_checkpoint_is_one_line_naming_the_flag(tmp_path, make, flag, wanted):
  path = make(tmp_path)
  with pytest.raises(checkpoints.CheckpointError) as e:
    restore.detect(path, flag)
  assert str(e.value) == wanted.format(path)


def test_export_hf_of_an_hf_folder_says_so(formats, capsys):
  out = formats["root"] / "again"
  assert cli.main(["export-hf", "--checkpoint_dir", formats["hf"], "--output_dir", str(out)]) != 0
  err = capsys.readouterr().err
  assert f"{formats['hf']} is already a Hugging Face folder" in err and "Traceback" not in err
  assert not out.exists()
