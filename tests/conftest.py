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
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite compiles hundreds of distinct tiny programs, and on CPU XLA spends most of each compile
# in LLVM optimizing code that then runs for milliseconds. These two flags nearly halved the CPU of
# a compile-heavy sample (43 -> 23 s) and cut the suite's by 30% (tests/README.md). They change how
# XLA's CPU backend emits code, not what the HLO computes; XMTF_TEST_XLA_DEFAULTS=1 runs the suite
# with XLA's defaults instead.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if os.environ.get("XMTF_TEST_XLA_DEFAULTS") != "1" and TEST_XLA_FLAGS not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import pytest  # noqa: E402

from xmtf_pipeline.network import T5Config  # noqa: E402

# The tests that take 20 s or more on 2 cores (tests/README.md says why each stays), longest first.
# They are marked `slow`: `-m "not slow"` is the quick run while editing. (Starting them first
# under worksteal was measured and did not shorten the suite: 11:06 against 10:50.)
SLOW = (
    "test_partitioning.py::test_two_processes_equal_one_and_checkpoints_cross_restore",
    "test_trainer.py::test_tiny_model_learns_copy_task",
    "test_cli.py::test_demo_runs_end_to_end",
    "test_train_runs.py::test_kill_9_and_resume_is_bitwise_identical",
    "test_train_runs.py::test_demo_stops_on_sigterm",
    "test_speed_levers.py::test_scanned_run_saves_per_layer_checkpoints_and_resumes_unscanned",
    "test_partitioning.py::test_meshes_match_one_device_and_rules",
    "test_bench.py::test_bench_runs_checks_and_reports_json",
    "test_bench_packing.py::test_bench_data_prints_examples_per_s_per_core",
    "test_train_runs.py::test_sigterm_saves_a_restorable_checkpoint_and_exits_0",
    "test_bench_packing.py::test_measured_mode_reports_nonpad_tokens_per_s_for_both",
    "test_tasks_xp3.py::test_every_language_task_reads_the_merged_layout",
    "test_train_runs.py::test_changed_model_on_restart_stops_before_any_rename",
    "test_train_runs.py::test_half_written_checkpoint_is_skipped",
    "test_hf_export.py::test_demo_export_loads_in_plain_transformers_subprocess",
    "test_t5x_eval_jobs.py::test_eval_sh_xmtf_runs_a_tiny_checkpoint",
    "test_planner.py::test_a_fake_device_mesh_compiles_in_a_child_process",
    "test_planner.py::test_the_one_gpu_mt0_xl_recipe_fits_a_40gb_a100_by_the_compiled_figure",
    "test_planner.py::test_the_one_gpu_mt0_xxl_recipe_fits_an_80gb_h100_by_the_compiled_figure",
    "test_eval_cli.py::test_xmtf_infer_predict_and_score",
    "test_train_runs.py::test_ctrl_c_saves_and_exits_130_and_a_second_one_aborts",
    "test_install.py::test_the_installed_wheel_runs_the_demo_outside_the_repository",
    "test_run_safety.py::test_a_data_error_mid_run_saves_first_and_the_printed_fix_runs",
    "test_run_safety.py::test_a_full_disk_while_saving_is_one_line_naming_the_last_checkpoint",
    "test_run_safety.py::test_a_second_trainer_on_the_same_model_dir_refuses_before_writing",
    # One module fixture (45 s: the 8-device child) serves these; the two-process run adds 15 s.
    "test_eval_meshes.py::test_every_mesh_gives_one_devices_results",
    "test_eval_meshes.py::test_parameters_are_restored_into_their_planned_shardings",
    "test_eval_meshes.py::test_a_num_partitions_that_cannot_work_is_one_line",
    "test_eval_meshes.py::test_infer_decodes_the_same_tokens_on_every_mesh",
    "test_eval_meshes.py::test_two_processes_of_four_devices_give_one_devices_results",
    "test_eval_meshes.py::test_select_checkpoint_scores_the_same_on_a_mesh",
)


def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.nodeid.split("/")[-1].split("[")[0] in SLOW:
      item.add_marker(pytest.mark.slow)


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
