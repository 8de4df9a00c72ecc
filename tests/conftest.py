"""Hermetic test environment: no hub, no GCS, quiet TF, small fake devices."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="xmtf_hf_home_"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One persistent XLA compile cache per test session, shared by the in-process tests and every
# subprocess they start (the environment is inherited): the same tiny programs compile once per
# session instead of once per test. Fresh per session, so no run sees another's cache. Set before
# jax is imported (it reads these at import).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="xmtf_jax_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The suite compiles hundreds of distinct tiny programs, and on CPU XLA spends most of each compile
# in LLVM optimizing code that then runs for milliseconds. These two flags halve the suite's compile
# CPU (tests/README.md). They change how XLA's CPU backend emits code, not what the HLO computes;
# XMTF_TEST_XLA_DEFAULTS=1 runs the suite with XLA's defaults instead.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if os.environ.get("XMTF_TEST_XLA_DEFAULTS") != "1" and TEST_XLA_FLAGS not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from xmtf_pipeline.network import T5Config  # noqa: E402


@pytest.fixture
def tiny_config() -> T5Config:
  return T5Config(vocab_size=96, emb_dim=32, num_heads=4, num_encoder_layers=2,
                  num_decoder_layers=3, head_dim=8, mlp_dim=48, dtype="float32")


if os.environ.get("XMTF_TEST_PROFILE"):
  # XMTF_TEST_PROFILE=FILE appends one line per test: wall seconds, this process's CPU seconds
  # and its finished subprocesses' CPU seconds (how tests/README.md's cost table is measured).
  import json
  import resource
  import time

  def _cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_protocol(item, nextitem):
    start = (time.perf_counter(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN))
    yield
    end = (time.perf_counter(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN))
    wall, cpu, child = (b - a for a, b in zip(start, end))
    with open(os.environ["XMTF_TEST_PROFILE"], "a") as f:
      f.write(json.dumps({"test": item.nodeid, "wall": round(wall, 2), "cpu": round(cpu, 2),
                          "child_cpu": round(child, 2)}) + "\n")
