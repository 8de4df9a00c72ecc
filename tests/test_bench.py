"""``xmtf bench train``: the FLOP count, the lever ladder, and a real (tiny, CPU) run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xmtf_pipeline import bench

REPO = Path(__file__).resolve().parent.parent


def test_flop_count_matches_the_issue_figure_and_hand_count():
  cfg = bench.model_config("mt5_large")
  assert bench.train_flops_per_example(cfg, 1024, 256) / 1e12 == pytest.approx(3.553, abs=5e-4)
  # Hand count for a 1-layer model: 3 x (encoder + decoder + head) forward matmul FLOPs.
  tiny = bench.model_config("mt5_tiny").replace(num_encoder_layers=1, num_decoder_layers=1)
  d, i, f, v, n, m = 64, 64, 128, 512, 10, 6
  enc = 2 * n * d * i * 4 + 2 * n * n * i * 2 + 2 * n * d * f * 3
  dec = (2 * m * d * i * 4 + 2 * m * m * i * 2 + 2 * m * d * i * 2 + 2 * n * d * i * 2
         + 2 * m * n * i * 2 + 2 * m * d * f * 3)
  assert bench.train_flops_per_example(tiny, n, m) == 3 * (enc + dec + 2 * m * d * v)


def test_ladder_adds_one_option_per_row():
  specs = bench.ladder_specs({"kind": "xmtf", "dropout": 0.1, "scan_layers": False})
  assert [s["name"] for s in specs] == [name for name, _ in bench.LADDER]
  assert specs[0]["scan_layers"] is False and specs[1]["scan_layers"] is True
  assert specs[-1]["attention_impl"] == "cudnn" and specs[-1]["dropout"] == 0.0
  assert specs[-1]["xla_flags"] == "--xla_gpu_enable_triton_gemm=false"
  assert specs[-1]["loss_chunk"] == 64 and specs[-1]["remat_policy"] == "dots_no_batch"
  for s in specs:  # every row builds a valid config
    options = {k: s[k] for k in bench.CONFIG_OPTIONS if k in s}
    bench.model_config("mt5_tiny", **options)


def test_bench_runs_checks_and_reports_json(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  proc = subprocess.run(
      [sys.executable, "-m", "xmtf_pipeline.cli", "bench", "train", "--model", "mt5_tiny",
       "--inputs", "24", "--targets", "8", "--steps", "2", "--batch", "4", "--scan",
       "--remat", "full", "--loss-chunk", "4", "--check", "--check-model", "mt5_tiny",
       "--check-dtypes", "float32",
       "--json", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  (row,) = result["rows"]
  assert row["options"]["scan_layers"] and row["options"]["loss_chunk"] == 4
  assert row["examples_per_s"] > 0 and row["step_s"] > 0
  assert row["mfu"] == pytest.approx(row["examples_per_s"] * result["flops_per_example"] / 1e12
                                     / result["ceiling_tflops"])
  checks = {(c["lever"], c["dtype"]): c for c in result["checks"]}
  assert len(checks) == 6  # float32 only here; bfloat16 too by default
  for (lever, dtype), c in checks.items():
    if lever.startswith("cuDNN attention"):  # no cuDNN on a CPU: reported, not hidden
      assert "error" in c
      continue
    assert c["ok"], c
    if dtype == "float32" and lever != "bf16 LM head":
      assert c["loss_rel"] < 1e-6 and c["grad_rel"] < 1e-5
  assert "lever" in proc.stdout and "xmtf: options as given" in proc.stdout


@pytest.mark.parametrize("name", sorted(bench.SIZES))
def test_bench_sizes_equal_the_model_gin_files(name):
  """bench.py avoids gin (GPU machines may lack it), so its table is checked here."""
  from xmtf_pipeline import gin_config
  want = gin_config.load_model_config(name)
  got = bench.model_config(name, dtype=want.dtype, dropout=want.dropout_rate)
  assert got == want


def test_bench_imports_neither_tensorflow_seqio_nor_gin():
  """GPU machines carry jax, flax, optax, torch and transformers only."""
  code = ("import sys; from xmtf_pipeline import bench, bench_checks, layer_stacking, models, "
          "partitioning, trainer; bad = [m for m in ('tensorflow', 'seqio', 'gin') "
          "if m in sys.modules]; assert not bad, bad")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
