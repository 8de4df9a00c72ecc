"""``xmtf import-hf`` and HF directories as INITIAL_CHECKPOINT_PATH: safetensors and
pytorch_model.bin, single and sharded; bitwise round trips; each bad input a clear error."""

import json
import os
import shutil
import stat

import jax
import numpy as np
import pytest
import torch
from interop_testlib import (
  SPM,
  TINY,
  UNEVEN,
  assert_trees_bitwise_equal,
  random_params,
  read_json,
  save_our_checkpoint,
  train_target,
)
from safetensors.numpy import load_file, save_file

from xmtf_pipeline import cli, params
from xmtf_pipeline.interop import hf_import, hf_mapping, restore
from xmtf_pipeline.interop.t5x_import import open_checkpoint
from xmtf_pipeline.params import ParamMismatchError


def write_hf_dir(out, tree, config, fmt="safetensors", shards=1, config_overrides=None,
                 drop=(), spiece=True):
  """An HF MT5 directory written with the libraries HF uses (safetensors / torch.save),
  not with our own writer, with an explicit untied lm_head.weight."""
  os.makedirs(out, exist_ok=True)
  state = {k: np.asarray(v, np.float32)
           for k, v in hf_mapping.iter_t5x_to_hf(params.flatten(tree)) if k not in drop}
  keys = sorted(state)
  groups = [keys[i::shards] for i in range(shards)]
  ext = "safetensors" if fmt == "safetensors" else "bin"
  stem = "model" if fmt == "safetensors" else "pytorch_model"
  names = ([f"{stem}.{ext}"] if shards == 1 else
           [f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}" for i in range(shards)])
  for name, group in zip(names, groups):
    part = {k: state[k] for k in group}
    if fmt == "safetensors":
      save_file(part, os.path.join(out, name), metadata={"format": "pt"})
    else:
      torch.save({k: torch.from_numpy(v.copy()) for k, v in part.items()}, os.path.join(out, name))
  if shards > 1:
    with open(os.path.join(out, f"{stem}.{ext}.index.json"), "w") as f:
      json.dump({"metadata": {}, "weight_map": {k: n for n, g in zip(names, groups) for k in g}},
                f)
  cfg = dict(hf_mapping.hf_config_dict(config), **(config_overrides or {}))
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(cfg, f)
  if spiece:
    shutil.copyfile(SPM, os.path.join(out, "spiece.model"))
  return out


def restored_params(ckpt_dir):
  reader = open_checkpoint(ckpt_dir)
  return params.unflatten({p: reader.read(f"target/{p}") for p in reader.shapes("target")}), reader


@pytest.fixture(scope="module")
def uneven_tree():
  return random_params(UNEVEN, seed=4)


def test_ours_to_hf_to_ours_is_bitwise(tmp_path):
  ckpt, tree, _ = save_our_checkpoint(str(tmp_path / "run"))
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir",
                   str(tmp_path / "hf")]) == 0
  assert cli.main(["import-hf", "--hf_dir", str(tmp_path / "hf"), "--output_dir",
                   str(tmp_path / "back"), "--model", "mt5_tiny",
                   "--gin_bindings", "COMPUTE_DTYPE = 'float32'"]) == 0
  back, reader = restored_params(str(tmp_path / "back" / "checkpoint_0"))
  assert_trees_bitwise_equal(back, jax.tree_util.tree_map(np.asarray, tree))
  # HF weights bring no optimizer state: zero accumulators at step 0.
  assert reader.step == 0
  slots = {n: reader.read(n) for n in reader.entries if n.startswith("state/param_states/")}
  assert slots and all(not np.any(v) for v in slots.values())
  for name in ("config.gin", "spiece.model", "import_source.json"):
    assert (tmp_path / "back" / name).is_file()


def test_hf_to_ours_to_hf_is_bitwise(tmp_path, uneven_tree):
  src = write_hf_dir(str(tmp_path / "src"), uneven_tree, UNEVEN)
  assert cli.main(["import-hf", "--hf_dir", src, "--output_dir", str(tmp_path / "ckpt")]) == 0
  assert cli.main(["export-hf", "--checkpoint_dir", str(tmp_path / "ckpt"), "--output_dir",
                   str(tmp_path / "again")]) == 0
  a, b = load_file(os.path.join(src, "model.safetensors")), load_file(
      str(tmp_path / "again" / "model.safetensors"))
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
  # The architecture survives too (eps, max distance, decoder depth come from config.gin).
  src_cfg, new_cfg = read_json(os.path.join(src, "config.json")), read_json(
      str(tmp_path / "again" / "config.json"))
  for key in ("d_model", "num_layers", "num_decoder_layers", "layer_norm_epsilon",
              "relative_attention_max_distance", "vocab_size", "tie_word_embeddings"):
    assert new_cfg[key] == src_cfg[key], key


@pytest.mark.parametrize("fmt,shards", [("safetensors", 3), ("pytorch", 1), ("pytorch", 2)])
def test_formats_and_shards(tmp_path, uneven_tree, fmt, shards):
  src = write_hf_dir(str(tmp_path / "src"), uneven_tree, UNEVEN, fmt=fmt, shards=shards)
  config, flat = hf_import.load(src)
  assert config == UNEVEN.replace(dropout_rate=0.1)
  assert_trees_bitwise_equal(params.unflatten(flat), jax.tree_util.tree_map(np.asarray,
                                                                            uneven_tree))


def test_bfloat16_sharded_export_imports(tmp_path):
  ckpt, tree, _ = save_our_checkpoint(str(tmp_path / "run"))
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(tmp_path / "hf"),
                   "--dtype", "bfloat16", "--max_shard_size", "150KB"]) == 0
  _, flat = hf_import.load(str(tmp_path / "hf"), TINY)
  for path, value in params.flatten(tree).items():
    want = np.asarray(value).astype("bfloat16").astype(np.float32)
    np.testing.assert_array_equal(flat[path], want, err_msg=path)


def test_initial_checkpoint_path_accepts_hf_dir(tmp_path, uneven_tree):
  src = write_hf_dir(str(tmp_path / "src"), uneven_tree, UNEVEN)
  target = train_target(UNEVEN)
  state = restore.restore_state(src, UNEVEN, target)
  assert_trees_bitwise_equal(state["target"], jax.tree_util.tree_map(np.asarray, uneven_tree))
  assert int(state["state"]["step"]) == 0
  assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(state["state"]))
  # Same tree structure, dtypes and devices as the trainer's own state.
  assert (jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(target))
  for got, like in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(target)):
    assert isinstance(got, jax.Array) and got.dtype == like.dtype
    assert got.sharding == like.sharding


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides,message", [
    ({"model_type": "bart", "architectures": ["BartForConditionalGeneration"]},
     "model_type 'bart' (BartForConditionalGeneration) is not an MT5 checkpoint"),
    ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
      "feed_forward_proj": "relu", "tie_word_embeddings": True}, "T5 (v1.0: ReLU MLP"),
    ({"scale_decoder_outputs": True}, "scale_decoder_outputs is true"),
    ({"architectures": ["MT5EncoderModel"]}, "architecture MT5EncoderModel"),
    ({"d_ff": 256}, "DenseReluDense.wi_0.weight has shape (128, 64), but config.json implies "
     "(256, 64); the weights do not match config.json"),
])
def test_other_architectures_are_refused(tmp_path, capsys, overrides, message):
  tree = random_params(TINY)
  src = write_hf_dir(str(tmp_path / "src"), tree, TINY, config_overrides=overrides)
  assert cli.main(["import-hf", "--hf_dir", src, "--output_dir", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert "xmtf import-hf: error:" in err and message in err
  assert not (tmp_path / "o").exists()


def test_tied_heads_are_refused(tmp_path):
  src = write_hf_dir(str(tmp_path / "a"), random_params(TINY), TINY, drop=("lm_head.weight",))
  with pytest.raises(hf_import.HFImportError, match=r"head is tied to the embedding \(no "
                                                     r"lm_head.weight\)"):
    restore.restore_state(src, TINY, train_target(TINY))
  tied = random_params(TINY)
  tied["decoder"]["logits_dense"]["kernel"] = np.asarray(tied["token_embedder"]["embedding"]).T
  src = write_hf_dir(str(tmp_path / "b"), tied, TINY, config_overrides={"tie_word_embeddings": True})
  with pytest.raises(hf_import.HFImportError, match="lm_head.weight equals shared.weight"):
    hf_import.load(src)


def test_transformers_resave_imports(tmp_path):
  """transformers 5.x re-saves an untied MT5 with tie_word_embeddings: true (it forces the
  flag) but keeps the distinct lm_head.weight: that must import, as stored."""
  from transformers import AutoModelForSeq2SeqLM
  tree = random_params(TINY, seed=2)
  src = write_hf_dir(str(tmp_path / "src"), tree, TINY)
  AutoModelForSeq2SeqLM.from_pretrained(src).save_pretrained(str(tmp_path / "resaved"))
  assert read_json(str(tmp_path / "resaved" / "config.json"))["tie_word_embeddings"] is True
  _, flat = hf_import.load(str(tmp_path / "resaved"), TINY)
  assert_trees_bitwise_equal(params.unflatten(flat), jax.tree_util.tree_map(np.asarray, tree))


def test_mismatching_config_is_refused(tmp_path, capsys):
  src = write_hf_dir(str(tmp_path / "src"), random_params(TINY), TINY)
  with pytest.raises(ParamMismatchError, match=r"num_decoder_layers=2 \(model gin "
                     r"num_decoder_layers=3\).*layer_norm_epsilon"):
    restore.restore_state(src, UNEVEN, train_target(UNEVEN))
  assert cli.main(["import-hf", "--hf_dir", src, "--output_dir", str(tmp_path / "o"),
                   "--model", "mt5_small"]) == 2
  assert "d_model=64 (model gin emb_dim=512)" in capsys.readouterr().err


def test_truncated_safetensors_is_refused(tmp_path, capsys):
  src = write_hf_dir(str(tmp_path / "src"), random_params(TINY), TINY)
  path = os.path.join(src, "model.safetensors")
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  assert cli.main(["import-hf", "--hf_dir", src, "--output_dir", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert "model.safetensors: truncated safetensors file" in err and "are present" in err
  with pytest.raises(hf_import.HFImportError, match="truncated"):
    restore.restore_state(src, TINY, train_target(TINY))
  with open(path, "r+b") as f:  # cut inside the header
    f.truncate(20)
  with pytest.raises(hf_import.HFImportError, match="truncated or not a safetensors file"):
    hf_import.load(src)


def test_missing_shard_and_bad_index(tmp_path):
  src = write_hf_dir(str(tmp_path / "src"), random_params(TINY), TINY, shards=2)
  os.remove(os.path.join(src, "model-00002-of-00002.safetensors"))
  with pytest.raises(hf_import.HFImportError, match="lists shard.*missing.*00002-of-00002"):
    hf_import.load(src)


def test_import_refuses_existing_output_dir(tmp_path, capsys):
  src = write_hf_dir(str(tmp_path / "src"), random_params(TINY), TINY)
  out = tmp_path / "taken"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  (out / "checkpoint_9").mkdir()
  (out / "checkpoint_9" / "checkpoint").write_bytes(b"another run")
  assert cli.main(["import-hf", "--hf_dir", src, "--output_dir", str(out)]) == 2
  assert "exists and is not empty" in capsys.readouterr().err
  assert (out / "notes.txt").read_text() == "mine"
  # --overwrite replaces only an earlier import: this folder survives intact.
  assert cli.main(["import-hf", "--hf_dir", src, "--output_dir", str(out), "--overwrite"]) == 2
  err = capsys.readouterr().err
  assert "not an earlier import" in err and "notes.txt" in err and "checkpoint_9" in err, err
  assert (out / "notes.txt").read_text() == "mine"
  assert (out / "checkpoint_9" / "checkpoint").read_bytes() == b"another run"
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_import_overwrite_replaces_an_earlier_import(tmp_path, capsys):
  src = write_hf_dir(str(tmp_path / "src"), random_params(TINY), TINY)
  out = tmp_path / "ckpt"
  old_umask = os.umask(0o022)
  try:
    assert cli.main(["import-hf", "--hf_dir", src, "--output_dir", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert cli.main(["import-hf", "--hf_dir", src, "--output_dir", str(out)]) == 2
    assert "holds an earlier import; pass --overwrite" in capsys.readouterr().err
    assert cli.main(["import-hf", "--hf_dir", src, "--output_dir", str(out), "--overwrite",
                     "--step", "5"]) == 0
  finally:
    os.umask(old_umask)
  assert sorted(os.listdir(out)) == ["checkpoint_5", "config.gin", "import_source.json",
                                     "spiece.model"]


