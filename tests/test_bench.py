"""``xmtf bench train``: the FLOP count, the lever ladder, and a real (tiny, CPU) run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xmtf_pipeline.tools import bench

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
  code = ("import sys; from xmtf_pipeline.tools import bench, bench_checks; "
          "from xmtf_pipeline import layer_stacking, models, "
          "partitioning, trainer; bad = [m for m in ('tensorflow', 'seqio', 'gin') "
          "if m in sys.modules]; assert not bad, bad")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


def _bench(tmp_path, *args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "xmtf_pipeline.cli", "bench", "train", *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_no_arguments_on_a_cpu_means_cpu_sized_defaults(capsys):
  """Not mt5-large at batch 32 (minutes, then out of memory); the defaults are said."""
  args = bench.build_parser().parse_args([])
  assert (args.model, args.inputs, args.targets, args.batch) == (None, None, None, None)
  bench._resolve_defaults(args, "cpu")
  assert (args.model, args.inputs, args.targets, args.batch, args.steps) == (
      "mt5_small", 128, 32, [4], 3)
  assert "CPU backend" in capsys.readouterr().out
  args = bench.build_parser().parse_args(["--model", "mt5_base"])
  bench._resolve_defaults(args, "gpu")
  assert (args.model, args.inputs, args.batch) == ("mt5_base", 1024, [32])


def test_failed_rows_are_marked_and_all_failed_exits_nonzero(tmp_path):
  """cuDNN attention cannot run on a CPU: the row says why, the exit code says failure."""
  out = tmp_path / "rows.jsonl"
  proc = _bench(tmp_path, "--model", "mt5_tiny", "--inputs", "16", "--targets", "8",
                "--batch", "2", "--steps", "1", "--dropout", "0", "--attention", "cudnn",
                "--ceiling", "1.0", "--jsonl", str(out))
  assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
  (row,) = [json.loads(x) for x in out.read_text().splitlines()]
  assert "cuDNN" in row["failed"] and row["model"] == "mt5_tiny"
  assert "FAILED: " in proc.stdout and "every row failed" in proc.stderr


def test_mt0_rows_have_xp3_lengths_then_padding():
  b = bench.mt0_like_batch(512, 1024, 256, 250112, seed=3)
  enc, tgt = b["encoder_input_tokens"], b["decoder_target_tokens"]
  n_in, n_out = (enc > 0).sum(1), (tgt > 0).sum(1)
  assert 270 <= n_in.mean() <= 330 and 54 <= n_out.mean() <= 66
  assert n_in.min() >= 2 and n_in.max() <= 1024 and np.median(n_in) < n_in.mean()  # long tail
  for tokens, n in ((enc, n_in), (tgt, n_out)):  # real tokens, EOS, then only padding
    assert (tokens[np.arange(512), n - 1] == 1).all()
    np.testing.assert_array_equal(tokens > 0, np.arange(tokens.shape[1]) < n[:, None])
  np.testing.assert_array_equal(b["decoder_loss_weights"], tgt > 0)
  assert (b["decoder_input_tokens"][:, 1:] == tgt[:, :-1]).all()


def test_top_ops_counts_nested_time_once():
  from xmtf_pipeline.tools import bench_profile
  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]

  def op(pid, name, ts, dur):
    return {"ph": "X", "pid": pid, "tid": 7, "ts": ts, "dur": dur, "name": name,
            "args": {"hlo_op": name}}
  events = meta + [op(1, "fusion.9", 0, 100), op(1, "fusion.1", 10, 30), op(1, "fusion.1", 50, 30),
                   op(1, "scatter.2", 200, 50), op(1, "while.3", 190, 90),
                   op(2, "host_only", 0, 1000)]
  got = bench_profile.top_ops(events, {"scatter.2": "jit(f)/transpose(jvp(Transformer))/embed"})
  assert got["where"] == "device"  # host events ignored when the device has ops
  # fusion.9 holds fusion.1 twice: 40 of its own; the loop is left out, its body counted.
  assert [(r["op"], r["time_us"]) for r in got["top"]] == [
      ("fusion.1", 60), ("scatter.2", 50), ("fusion.9", 40)]
  assert sum(r["share"] for r in got["top"]) == pytest.approx(1.0)
  assert got["top"][1]["source"].endswith("/embed") and got["top"][0]["events"] == 2
  assert "bwd/embed" in bench_profile.profile_table(got)


def test_profile_on_cpu_writes_the_top_ops(tmp_path):
  proc = _bench(tmp_path, "--model", "mt5_tiny", "--inputs", "32", "--targets", "8",
                "--batch", "2", "--profile", str(tmp_path / "prof"), "--data", "mt0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "prof" / "top_ops.json").read_text())
  top = result["profile"]["top"]
  assert len(top) == 15 and all(r["time_us"] > 0 for r in top)
  assert 0 < sum(r["share"] for r in top) <= 1.0 + 1e-9
  assert result["profile"]["where"] == "host"  # XLA:CPU runs its ops on host threads
  assert "top 15 of" in proc.stdout and top[0]["op"] in proc.stdout


def test_table_prints_once_and_unmeasured_peak_says_so(monkeypatch, capsys):
  """XLA:CPU keeps no memory_stats: its peak is 'not measured', not 0.0 GiB; rows print as they
  finish under one header and the summary does not print them again."""
  class NoStats:
    def memory_stats(self):
      return None

  class Zero:
    def memory_stats(self):
      return {"peak_bytes_in_use": 0}

  assert bench.peak_device_bytes(NoStats()) is None and bench.peak_device_bytes(Zero()) is None

  def fake_child(spec, args, timeout):
    return {"engine": "xmtf: " + spec.get("name", ""), "batch": spec["batch"], "data": "full",
            "compile_s": 1.0, "step_s": 0.5, "loss": 7.0, "peak_bytes": None,
            "real_tokens_per_row": 24.0}
  monkeypatch.setattr(bench, "run_child", fake_child)
  assert bench.main(["--model", "mt5_tiny", "--inputs", "16", "--targets", "8", "--steps", "1",
                     "--batch", "2", "--batch", "4", "--ceiling", "1.0"]) == 0
  out = capsys.readouterr().out
  table_lines = [x for x in out.splitlines() if x.startswith(("engine", "xmtf: "))]
  assert [x.split()[0] for x in table_lines] == ["engine", "xmtf:", "xmtf:"], out
  assert out.count(bench.PEAK_NOT_MEASURED) == 2 and " 0.0 " not in out
  assert "peak GiB" in table_lines[0]
  measured = bench.table([dict(json.loads(out.split("JSON:")[1])["rows"][0],
                               peak_bytes=3 * 2**30)])
  assert " 3.0 " in measured and bench.PEAK_NOT_MEASURED not in measured
