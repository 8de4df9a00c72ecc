"""Trains the tiny model 5 steps on several meshes and prints JSON comparisons.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by the test).
"""

import json

import jax
import numpy as np

from xmtf_pipeline import models, params, schedules, trainer
from xmtf_pipeline.adafactor import Adafactor
from xmtf_pipeline.network import T5Config
from xmtf_pipeline.partitioning import Partitioner
from xmtf_pipeline.tools import planner

# mt5_tiny's widths with one layer each (tests/micro_model.py): sharding does not depend on depth,
# and each of the five meshes compiles its own program.
CONFIG = T5Config(vocab_size=512, emb_dim=64, num_heads=4, num_encoder_layers=1,
                  num_decoder_layers=1, head_dim=16, mlp_dim=128, dtype="float32")


def batches(n, batch=16, li=24, lt=12):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    enc = rng.integers(2, 512, (batch, li)).astype(np.int32)
    tgt = rng.integers(2, 512, (batch, lt)).astype(np.int32)
    enc[:, -3:] = 0
    tgt[::2, -4:] = 0
    dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
    out.append({"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
                "decoder_input_tokens": dec, "decoder_loss_weights": (tgt > 0).astype(np.float32)})
  return out


def run(partitioner, devices):
  model = models.EncoderDecoderModel(CONFIG, loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  opt = Adafactor()
  lr = schedules.create_learning_rate_scheduler("constant", base_learning_rate=1e-2)
  partitioner = partitioner.with_devices(devices)
  state, shardings = trainer.init_state(model, opt, partitioner, jax.random.PRNGKey(0))
  step = trainer.jit_train_step(model, opt, lr, 1, partitioner, shardings)
  losses = []
  for b in batches(5):
    state, stats = step(state, partitioner.shard_batch(b), jax.random.PRNGKey(1))
    losses.append(float(stats["loss"]))
  return losses, state


def expected_specs(partitioner):
  rules = dict()
  for logical, mesh_axis in partitioner.rules:
    rules.setdefault(logical, mesh_axis)  # first matching rule wins (flax semantics)
  logical = params.logical_axes(CONFIG)
  return {p: tuple(rules.get(a) for a in names) for p, names in logical.items()}


def main():
  devices = jax.devices()
  assert len(devices) == 8, devices
  ref_losses, ref_state = run(Partitioner(), devices[:1])
  ref = params.flatten(jax.device_get(ref_state.params))
  report = {}
  for name, part, shape in (("data4_model2", Partitioner(num_partitions=2), (4, 2)),
                            ("data2_model4", Partitioner(num_partitions=4), (2, 4)),
                            ("fully_sharded_data4_model2",
                             Partitioner(num_partitions=2, parameter_partitioning_dims=2), (4, 2)),
                            ("submesh_1_1_2_1", Partitioner(num_partitions=None,
                                                            model_parallel_submesh=(1, 1, 2, 1)),
                             (4, 2))):
    losses, state = run(part, devices)
    got = params.flatten(jax.device_get(state.params))
    rel = max(float(np.linalg.norm(got[p] - ref[p]) / max(np.linalg.norm(ref[p]), 1e-30))
              for p in ref)
    loss_rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
    specs = expected_specs(part)
    mismatched = []
    for path, arr in params.flatten(state.params).items():
      spec = tuple(arr.sharding.spec) + (None,) * (arr.ndim - len(arr.sharding.spec))
      if spec != specs[path]:
        mismatched.append(f"{path}: {spec} != {specs[path]}")
    planned_p, planned_o = planner.state_bytes(CONFIG, part, {"data": shape[0], "model": shape[1]})
    dev0 = jax.devices()[0]

    def on_dev0(tree, dev0=dev0):
      return sum(s.data.nbytes for leaf in jax.tree_util.tree_leaves(tree)
                 for s in leaf.addressable_shards if s.device == dev0)
    mesh_shape = dict(state.params["decoder"]["logits_dense"]["kernel"].sharding.mesh.shape)
    # Adafactor's factored slots are replicated, full slots follow the parameter.
    emb_state = state.opt_state["param_states"]["token_embedder"]["embedding"]
    report[name] = {"param_rel": rel, "loss_rel": loss_rel, "mismatched_specs": mismatched,
                    "planned_param_bytes": planned_p, "actual_param_bytes": on_dev0(state.params),
                    "planned_opt_bytes": planned_o,
                    "actual_opt_bytes": on_dev0(state.opt_state),
                    "mesh": mesh_shape, "mesh_ok": mesh_shape == {"data": shape[0],
                                                                  "model": shape[1]},
                    "v_row_replicated": emb_state["v_row"].sharding.is_fully_replicated,
                    "embedding_spec": str(state.params["token_embedder"]["embedding"].sharding.spec),
                    "relpos_v_spec": str(state.opt_state["param_states"]["encoder"]["relpos_bias"]
                                         ["rel_embedding"]["v"].sharding.spec)}
  print("JSON:" + json.dumps({"ref_losses": ref_losses, "runs": report}))


if __name__ == "__main__":
  main()
