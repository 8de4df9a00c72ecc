"""Native T5X checkpoints as INITIAL_CHECKPOINT_PATH: the legacy layout (msgpack + TensorStore)
and the orbax layouts, with parameters, Adafactor state and step; fixtures are written with
tensorstore and msgpack directly, following T5X's documented layout (reference doc §4.4)."""

import os
import shutil

import jax
import msgpack
import numpy as np
import pytest
import tensorstore as ts
from interop_testlib import (
  SPM,
  TINY,
  assert_trees_bitwise_equal,
  random_opt_state,
  random_params,
  train_target,
)
from safetensors.numpy import load_file

from xmtf_pipeline import cli, params
from xmtf_pipeline.interop import hf_mapping, restore, t5x_import
from xmtf_pipeline.params import ParamMismatchError

STEP = 1_000_000
BF16 = "encoder/layers_0/attention/query/kernel"  # one target array saved as bfloat16


def _pack(obj) -> bytes:
  """msgpack with flax's extension types (1: ndarray, 3: numpy scalar) = (shape, dtype, bytes)."""
  def default(x):
    if isinstance(x, np.ndarray):
      return msgpack.ExtType(1, msgpack.packb((x.shape, x.dtype.name, x.tobytes()),
                                              use_bin_type=True))
    if isinstance(x, np.generic):
      return msgpack.ExtType(3, msgpack.packb(((), x.dtype.name, np.asarray(x).tobytes()),
                                              use_bin_type=True))
    raise TypeError(type(x))
  return msgpack.packb(obj, default=default, use_bin_type=True)


def _nested_set(tree, path, value):
  *head, last = path.split("/")
  for k in head:
    tree = tree.setdefault(k, {})
  tree[last] = value


def _t5x_state(seed=0):
  tree = random_params(TINY, seed)
  return {"target": tree, "state": random_opt_state(tree, STEP, seed + 1)}


def _write_zarr(path, arr, dtype, compressor):
  chunks = [max(1, arr.shape[0] // 2)] + list(arr.shape[1:])  # several chunks per array
  spec = {"driver": "zarr", "dtype": dtype, "kvstore": {"driver": "file", "path": path},
          "metadata": {"compressor": {"id": compressor}, "shape": list(arr.shape),
                       "chunks": chunks}}
  ts.open(spec, create=True).result().write(arr.astype(dtype)).result()
  return spec


def write_legacy(ckpt_dir, state, drop_arrays=()):
  """T5X ``checkpoints.Checkpointer`` layout, version 3: partitioned leaves as gzip zarr
  folders named by their dotted path, their (relative) TensorStore specs in the msgpack;
  unpartitioned leaves (the step, unused (1,) Adafactor slots) inline in the msgpack."""
  os.makedirs(ckpt_dir)
  optimizer = {}
  for name, value in params.flatten(state).items():
    if name in drop_arrays:
      continue
    arr = np.asarray(value)
    if arr.ndim == 0 or arr.shape == (1,):
      _nested_set(optimizer, name, arr)
      continue
    rel = name.replace("/", ".")
    dtype = "bfloat16" if name == f"target/{BF16}" else arr.dtype.name
    spec = _write_zarr(os.path.join(ckpt_dir, rel), arr, dtype, "gzip")
    spec["kvstore"]["path"] = rel  # T5X stores the path relative to the checkpoint folder
    _nested_set(optimizer, name, spec)
  with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as f:
    f.write(_pack({"version": 3, "optimizer": optimizer}))


def write_t5x_orbax_folders(ckpt_dir, state):
  """T5X's OrbaxCheckpointManagerInterface with PyTreeCheckpointHandler(use_ocdbt=False):
  ``state/<dotted.name>/`` zarr arrays, aggregated leaves in the ``state/checkpoint`` msgpack
  (placeholders for the others)."""
  state_dir = os.path.join(ckpt_dir, "state")
  os.makedirs(state_dir)
  aggregate = {}
  for name, value in params.flatten(state).items():
    arr = np.asarray(value)
    rel = name.replace("/", ".")
    if arr.ndim == 0:
      _nested_set(aggregate, name, arr)
    else:
      _write_zarr(os.path.join(state_dir, rel), arr, arr.dtype.name, "zstd")
      _nested_set(aggregate, name, f"PLACEHOLDER://{rel}")
  with open(os.path.join(state_dir, "checkpoint"), "wb") as f:
    f.write(_pack(aggregate))


def write_orbax_ocdbt(ckpt_dir, state):
  """The newer orbax layout (OCDBT), as written by orbax's PyTreeCheckpointHandler."""
  import orbax.checkpoint as ocp
  ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=True))
  ckptr.save(os.path.join(ckpt_dir, "state"), args=ocp.args.PyTreeSave(state))
  ckptr.close()


def _expected(state):
  out = jax.tree_util.tree_map(np.asarray, state)
  flat = params.flatten(out)
  flat[f"target/{BF16}"] = flat[f"target/{BF16}"].astype("bfloat16").astype(np.float32)
  return params.unflatten(flat)


@pytest.mark.parametrize("layout", ["legacy", "legacy-file", "legacy-model-dir", "orbax-folders",
                                    "orbax-ocdbt"])
def test_restores_params_adafactor_state_and_step(tmp_path, layout):
  state = _t5x_state()
  ckpt = str(tmp_path / "mt5_tiny" / f"checkpoint_{STEP}")
  if layout.startswith("legacy"):
    write_legacy(ckpt, state)
    expected = _expected(state)
  elif layout == "orbax-folders":
    write_t5x_orbax_folders(ckpt, state)
    expected = jax.tree_util.tree_map(np.asarray, state)
  else:
    write_orbax_ocdbt(ckpt, state)
    expected = jax.tree_util.tree_map(np.asarray, state)
  path = {"legacy-file": os.path.join(ckpt, "checkpoint"),
          "legacy-model-dir": os.path.dirname(ckpt)}.get(layout, ckpt)
  target = train_target(TINY)
  restored = restore.restore_state(path, TINY, target)
  assert int(restored["state"]["step"]) == STEP
  got = jax.tree_util.tree_map(np.asarray, restored)
  got["state"]["step"] = np.asarray(got["state"]["step"])
  expected["state"]["step"] = np.asarray(STEP, np.int32)
  assert_trees_bitwise_equal(got, expected)
  # Same tree, dtypes and shardings as the trainer's own state (restores land in its layout).
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(target)
  for leaf, like in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(target)):
    assert leaf.dtype == like.dtype and leaf.sharding == like.sharding


def test_export_hf_from_a_t5x_checkpoint(tmp_path):
  """The mT5 -> HF converter path: a native T5X checkpoint straight to an HF directory."""
  state = _t5x_state()
  ckpt = str(tmp_path / f"checkpoint_{STEP}")
  write_legacy(ckpt, state)
  out = tmp_path / "hf"
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out),
                   "--spm_model", SPM]) == 0
  weights = load_file(str(out / "model.safetensors"))
  expected = params.flatten(_expected(state)["target"])
  assert sorted(weights) == sorted(hf_mapping.to_hf_name(p)[0] for p in expected)
  for key, value in hf_mapping.iter_t5x_to_hf(expected):
    assert weights[key].tobytes() == value.tobytes(), key
  assert f"step {STEP}" in (out / "README.md").read_text()


@pytest.mark.parametrize("layout", ["legacy", "orbax-folders"])
def test_parameters_load_whatever_adafactor_factoring_wrote_the_checkpoint(tmp_path, layout):
  """A T5X checkpoint saved with min_dim_size_to_factor=16 (T5X's default is 128): its optimizer
  slots have other shapes than our default Adafactor's (v_row/v_col instead of v). Eval, infer,
  select-checkpoint and export-hf need the parameters only, so they must load it; training from
  it (the full state) must still refuse, naming the slot."""
  from xmtf_pipeline.adafactor import Adafactor

  tree = random_params(TINY, 3)
  slots = Adafactor(min_dim_size_to_factor=16).init(tree)["param_states"]
  wi = "encoder/layers_0/mlp/wi_0/kernel"
  assert params.flatten(slots)[f"{wi}/v_row"].shape != (1,), "the fixture must factor differently"
  assert params.flatten(Adafactor().init(tree)["param_states"])[f"{wi}/v_row"].shape == (1,)
  state = {"target": tree, "state": {"step": np.asarray(STEP, np.int32), "param_states": slots}}
  ckpt = str(tmp_path / f"checkpoint_{STEP}")
  (write_legacy if layout == "legacy" else write_t5x_orbax_folders)(ckpt, state)
  expected = params.flatten((_expected(state) if layout == "legacy" else state)["target"])

  got = params.flatten(jax.tree_util.tree_map(np.asarray, restore.restore_params(ckpt, TINY)))
  assert sorted(got) == sorted(expected)
  for name, value in expected.items():
    assert got[name].tobytes() == np.asarray(value, np.float32).tobytes(), name
  with pytest.raises(t5x_import.T5XCheckpointError, match=r"v_row has shape \(64,\) but the optimizer"):
    restore.restore_state(ckpt, TINY, train_target(TINY))
  out = tmp_path / "hf"
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out),
                   "--spm_model", SPM]) == 0
  weights = load_file(str(out / "model.safetensors"))
  for key, value in hf_mapping.iter_t5x_to_hf(expected):
    assert weights[key].tobytes() == np.asarray(value).tobytes(), key


# --------------------------------------------------------------------------- bad input


def test_missing_array_folder_is_named(tmp_path):
  ckpt = str(tmp_path / f"checkpoint_{STEP}")
  write_legacy(ckpt, _t5x_state())
  shutil.rmtree(os.path.join(ckpt, "target.encoder.layers_1.mlp.wo.kernel"))
  with pytest.raises(t5x_import.T5XCheckpointError,
                     match="array target/encoder/layers_1/mlp/wo/kernel cannot be opened.*"
                           "incomplete or damaged"):
    restore.restore_state(ckpt, TINY, train_target(TINY))


def test_missing_optimizer_arrays_are_listed(tmp_path):
  ckpt = str(tmp_path / f"checkpoint_{STEP}")
  slots = [f"state/param_states/decoder/layers_1/mlp/wi_1/kernel/{s}"
           for s in ("v_row", "v_col", "v", "m")]
  write_legacy(ckpt, _t5x_state(), drop_arrays=slots)
  with pytest.raises(t5x_import.T5XCheckpointError,
                     match=r"is missing 4 of the \d+ arrays of a train state: "
                           r"state/param_states/decoder/layers_1/mlp/wi_1/kernel/m"):
    restore.restore_state(ckpt, TINY, train_target(TINY))


def test_missing_or_mismatched_parameters(tmp_path):
  ckpt = str(tmp_path / "a" / f"checkpoint_{STEP}")
  write_legacy(ckpt, _t5x_state(), drop_arrays=["target/decoder/decoder_norm/scale"])
  with pytest.raises(ParamMismatchError, match="missing parameter decoder/decoder_norm/scale"):
    restore.restore_state(ckpt, TINY, train_target(TINY))
  write_legacy(str(tmp_path / "b" / f"checkpoint_{STEP}"), _t5x_state())
  wide = TINY.replace(mlp_dim=256)
  with pytest.raises(ParamMismatchError, match="has shape .* but the model config expects .*"
                                               "another model size"):
    restore.restore_state(str(tmp_path / "b"), wide, train_target(wide))  # a MODEL_DIR


def test_tensorflow_checkpoint_is_named(tmp_path):
  ckpt = tmp_path / "model.ckpt-1000000"
  ckpt.mkdir()
  (ckpt / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-1000000"\n')
  with pytest.raises(t5x_import.T5XCheckpointError, match="TensorFlow \\(Mesh TensorFlow\\)"):
    restore.restore_state(str(ckpt), TINY, train_target(TINY))


def test_gcs_needs_credentials(tmp_path, monkeypatch):
  monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
  monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
  monkeypatch.setattr(t5x_import, "GCE_PRODUCT_FILE", str(tmp_path / "no_such_file"))
  assert not t5x_import.gcs_credentials_available()
  path = "gs://t5-data/pretrained_models/t5x/mt5_base/checkpoint_1000000"
  with pytest.raises(t5x_import.T5XCheckpointError,
                     match="needs Google Cloud credentials.*gcloud auth application-default login"):
    restore.restore_state(path, TINY, train_target(TINY))
  key = tmp_path / "key.json"
  key.write_text("{}")
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
  assert t5x_import.gcs_credentials_available()
  # With credentials the location maps onto TensorStore's GCS driver (nothing is fetched here).
  loc = t5x_import.Location.of(path)
  assert loc.join("state").kvstore("target.x") == {
      "driver": "gcs", "bucket": "t5-data",
      "path": "pretrained_models/t5x/mt5_base/checkpoint_1000000/state/target.x/"}


_SHARDED_RESTORE = """
import os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
sys.path.insert(0, {tests!r})
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from interop_testlib import TINY, train_target
from xmtf_pipeline.interop import restore
mesh = Mesh(np.array(jax.devices()), ("model",))
def shard(x):
  split = x.ndim >= 1 and x.shape[0] % 2 == 0
  return jax.device_put(x, NamedSharding(mesh, P("model") if split else P()))
target = jax.tree_util.tree_map(shard, train_target(TINY))
restored = restore.restore_state({ckpt!r}, TINY, target)
for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(target)):
  assert a.sharding == b.sharding, (a.sharding, b.sharding)
emb = restored["target"]["token_embedder"]["embedding"]
assert [s.data.shape for s in emb.addressable_shards] == [(256, 64), (256, 64)]
np.save({out!r}, np.asarray(emb))
print("sharded ok", int(restored["state"]["step"]))
"""


def test_restore_lands_in_a_sharded_layout(tmp_path):
  """On a 2-device mesh each device's block is read into the target's sharding."""
  import subprocess
  import sys
  state = _t5x_state()
  ckpt = str(tmp_path / f"checkpoint_{STEP}")
  write_legacy(ckpt, state)
  out = str(tmp_path / "emb.npy")
  script = _SHARDED_RESTORE.format(tests=os.path.dirname(__file__), ckpt=ckpt, out=out)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"sharded ok {STEP}" in proc.stdout
  np.testing.assert_array_equal(np.load(out), state["target"]["token_embedder"]["embedding"])
