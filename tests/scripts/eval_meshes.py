"""xmtf eval on 8 fake CPU devices with NUM_PARTITIONS 1, 2 and 4, the restored parameters'
shardings, and the bad NUM_PARTITIONS messages; prints JSON after "JSON:".

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (set before jax starts);
argv: the checkpoint, the output root, the suite, the rows per dataset and a prompts file for
xmtf infer (greedy and beam search on each mesh).
"""

import contextlib
import io
import json
import os
import shutil
import sys

import jax
import numpy as np

from tasks import heldout, vocab
from xmtf_pipeline import cli, gin_config
from xmtf_pipeline.interop import restore
from xmtf_pipeline.partitioning import Partitioner


def _eval(checkpoint, out_dir, suite, rows, *extra):
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    rc = cli.main(["eval", "--checkpoint", checkpoint, "--output_dir", out_dir, "--suite", suite,
                   "--max_examples", rows, "--batch_size", "4", "--model", "mt5_tiny",
                   "--spm_model", str(vocab.SAMPLE_SPM), *extra])
  return rc, err.getvalue()


def infer(checkpoint, out_dir, prompts, decoding, *extra):
  """xmtf infer (predict) of the prompts file; (rc, stderr)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    rc = cli.main(["infer", "--checkpoint", checkpoint, "--output_dir", out_dir, "--input_file",
                   prompts, "--decoding", decoding, "--batch_size", "3", "--model", "mt5_tiny",
                   "--spm_model", str(vocab.SAMPLE_SPM),
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", *extra])
  return rc, err.getvalue()


def main():
  checkpoint, root, suite, rows, prompts = sys.argv[1:6]
  report = {"devices": jax.device_count(), "runs": {}, "bad": {}, "shardings": {},
            "formats": {}}
  for mp in (1, 2, 4):
    rc, err = _eval(checkpoint, f"{root}/mp{mp}", suite, rows, f"--gin.NUM_PARTITIONS={mp}")
    report["runs"][mp] = {"rc": rc, "stderr": err[-2000:]}
    for decoding in ("greedy", "beam"):
      report["runs"][f"{decoding}{mp}"] = infer(checkpoint, f"{root}/{decoding}{mp}", prompts,
                                                decoding, f"--gin.NUM_PARTITIONS={mp}")
  # select-checkpoint on a copy of the run (its validation scores are a cache in MODEL_DIR).
  shutil.copytree(os.path.dirname(checkpoint), f"{root}/run_select_mesh")
  report["select"] = cli.main(["select-checkpoint", "--model_dir", f"{root}/run_select_mesh",
                               "--suite", "copa", "--data_dir", str(heldout.BUNDLED_DIR),
                               "--max_examples", rows, "--model", "mt5_tiny",
                               "--spm_model", str(vocab.SAMPLE_SPM), "--num_partitions", "2"])
  for mp in (3, 8):  # 3 does not divide 8 devices; 8 does not divide the tiny model's 4 heads
    report["bad"][mp] = _eval(checkpoint, f"{root}/bad{mp}", suite, rows,
                              f"--gin.NUM_PARTITIONS={mp}")
  # Restored straight into the planned shardings, whatever the format (ours, its HF export, that
  # imported back as T5X legacy): no whole copy of a model-parallel weight.
  from xmtf_pipeline import params as params_lib
  partitioner = Partitioner(num_partitions=4)
  config = gin_config.load_model_config("mt5_tiny")
  planned = params_lib.flatten(partitioner.param_shardings(
      params_lib.abstract_variables(config)["params"]))
  assert cli.main(["export-hf", "--checkpoint_dir", checkpoint, "--output_dir", f"{root}/hf",
                   "--spm_model", str(vocab.SAMPLE_SPM)]) == 0
  assert cli.main(["import-hf", "--hf_dir", f"{root}/hf", "--output_dir", f"{root}/t5x"]) == 0
  for fmt, path in (("ours", checkpoint), ("hf", f"{root}/hf"), ("t5x-legacy", f"{root}/t5x")):
    report["formats"][fmt] = restore.detect(path).format
    params = restore.restore_params(path, config, partitioner)
    report["shardings"][fmt] = {name: {
        "spec": str(array.sharding.spec), "planned": str(planned[name].spec),
        "shape": list(array.shape),
        "shard_shape": list(array.addressable_shards[0].data.shape),
        "devices": len(array.sharding.device_set),
        "sum": float(np.asarray(array, np.float64).sum())}
        for name, array in params_lib.flatten(params).items()}
  print("JSON:" + json.dumps(report))


if __name__ == "__main__":
  main()
