"""xmtf eval on the whole mesh (issue 26): 8 fake CPU devices with NUM_PARTITIONS 1, 2 and 4
give one device's per-prompt accuracies and per-example scores; parameters are restored into
their planned shardings; a NUM_PARTITIONS that cannot work is one line."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import distributed_testlib
import numpy as np
import pytest
from eval_testlib import write_checkpoints

import gin
from tasks import heldout, vocab
from xmtf_pipeline import cli, gin_config

REPO = Path(__file__).resolve().parent.parent
_SPEC = importlib.util.spec_from_file_location("eval_meshes", REPO / "tests/scripts/eval_meshes.py")
eval_meshes = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(eval_meshes)  # the child's own xmtf infer call, run here on one device
SUITE, ROWS = "heldout_bundled", "2"
PROMPTS = ["Translate to French: the cat sleeps.", "Is this review positive? Great food.",
           "Question: what colour is the sky? Answer:", "Summarize: rain fell all day.",
           "Premise: he ran. Hypothesis: he moved. Entailment?"]


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
  root = tmp_path_factory.mktemp("meshes")
  write_checkpoints(root / "run", gin_config.load_model_config("mt5_tiny"), steps=(10,))
  checkpoint = str(root / "run" / "checkpoint_10")
  # One device: this process (the suite runs on jax's single CPU device).
  rc = cli.main(["eval", "--checkpoint", checkpoint, "--output_dir", str(root / "one"),
                 "--suite", SUITE, "--max_examples", ROWS, "--batch_size", "4",
                 "--model", "mt5_tiny", "--spm_model", str(vocab.SAMPLE_SPM)])
  gin.clear_config()
  assert rc == 0
  shutil.copytree(root / "run", root / "run_select_one")
  assert cli.main(["select-checkpoint", "--model_dir", str(root / "run_select_one"), "--suite",
                   "copa", "--data_dir", str(heldout.BUNDLED_DIR), "--max_examples", ROWS,
                   "--model", "mt5_tiny", "--spm_model", str(vocab.SAMPLE_SPM)]) == 0
  gin.clear_config()
  prompts = root / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"inputs": text}) + "\n" for text in PROMPTS))
  for decoding in ("greedy", "beam"):
    assert eval_meshes.infer(checkpoint, str(root / f"{decoding}-one"), str(prompts),
                             decoding)[0] == 0
    gin.clear_config()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO),
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                       "--xla_force_host_platform_device_count=8".strip())
  out = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "eval_meshes.py"),
                        checkpoint, str(root), SUITE, ROWS, str(prompts)],
                       env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return root, out.stdout, json.loads(out.stdout.split("JSON:", 1)[1])


def _examples(folder: Path) -> dict:
  rows = {}
  for path in sorted((folder / "examples").rglob("*.jsonl")):
    for line in path.read_text().splitlines():
      r = json.loads(line)
      rows[r["dataset"], r["config"], r["prompt"], r["index"]] = r
  return rows


@pytest.mark.parametrize("mp", [1, 2, 4])
def test_every_mesh_gives_one_devices_results(meshes, mp):
  root, stdout, report = meshes
  assert report["devices"] == 8 and report["runs"][str(mp)]["rc"] == 0, report["runs"]
  assert f"mesh data={8 // mp} model={mp} on 8 devices, 1 process" in stdout
  one = json.loads((root / "one" / "results.json").read_text())["prompts"]
  mesh = json.loads((root / f"mp{mp}" / "results.json").read_text())["prompts"]
  assert [(p["dataset"], p["config"], p["prompt"], p["accuracy"], p["num_examples"])
          for p in one] == [(p["dataset"], p["config"], p["prompt"], p["accuracy"],
                             p["num_examples"]) for p in mesh]
  a, b = _examples(root / "one"), _examples(root / f"mp{mp}")
  assert a.keys() == b.keys() and len(a) == sum(p["num_examples"] for p in one) > 0
  for key in a:
    assert a[key]["prediction"] == b[key]["prediction"], key
    # Sums of about -85 over tokens, reduced in another order per mesh: float32's spacing there
    # is 7.6e-6, so the bound is relative (measured: at most 2 ulps, 1.8e-7).
    np.testing.assert_allclose(a[key]["scores"], b[key]["scores"], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("fmt", ["ours", "hf", "t5x-legacy"])
def test_parameters_are_restored_into_their_planned_shardings(meshes, fmt):
  _, _, report = meshes
  assert report["formats"][fmt] == fmt  # restore.detect tells the three apart
  shardings = report["shardings"][fmt]
  assert all(s["spec"] == s["planned"] for s in shardings.values()), shardings
  split = {n: s for n, s in shardings.items() if "'model'" in s["planned"]}
  assert split, "the tiny model has model-parallel weights"
  for name, s in split.items():  # each device holds its slice, never the whole weight
    assert s["shard_shape"] != s["shape"] and np.prod(s["shard_shape"]) * 4 == np.prod(
        s["shape"]), (name, s)
  ours = report["shardings"]["ours"]  # the same weights, whichever format carried them
  for name, s in shardings.items():
    assert s["sum"] == pytest.approx(ours[name]["sum"], rel=1e-6, abs=1e-6), name


@pytest.mark.parametrize("mp,wanted", [
    (3, "NUM_PARTITIONS: Model-parallel size 3 does not divide the 8 devices"),
    (8, "NUM_PARTITIONS=8 does not divide the model's 4 attention heads")])
def test_a_num_partitions_that_cannot_work_is_one_line(meshes, mp, wanted):
  _, _, report = meshes
  rc, err = report["bad"][str(mp)]
  lines = [line for line in err.splitlines() if line.strip()]
  assert rc == 2 and len(lines) == 1 and wanted in lines[0], err


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
@pytest.mark.parametrize("mp", [1, 2, 4])
def test_infer_decodes_the_same_tokens_on_every_mesh(meshes, decoding, mp):
  root, _, report = meshes
  assert report["runs"][f"{decoding}{mp}"][0] == 0, report["runs"][f"{decoding}{mp}"]

  def rows(folder):
    return [json.loads(line) for line in
            (root / folder / "prompts-predict.jsonl-00000-of-00001").read_text().splitlines()]
  one, mesh = rows(f"{decoding}-one"), rows(f"{decoding}{mp}")
  assert len(one) == len(PROMPTS) and any(r["prediction"] for r in one)
  assert [r["prediction"] for r in one] == [r["prediction"] for r in mesh]
  if decoding == "beam":
    np.testing.assert_allclose([r["aux"]["score"] for r in one],
                               [r["aux"]["score"] for r in mesh], rtol=1e-5)


def _two_processes(args: list[str]) -> list[str]:
  """``xmtf ARGS`` as 2 jax.distributed processes of 4 fake devices each; their outputs."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO),
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                       "--xla_force_host_platform_device_count=4".strip())

  def command(port, i, attempt):  # a retry replaces what the failed attempt may have written
    return ([sys.executable, "-m", "xmtf_pipeline.cli", *args, "--model", "mt5_tiny",
             "--spm_model", str(vocab.SAMPLE_SPM), "--gin.NUM_PARTITIONS=2", "--multiprocess_gpu",
             f"--coordinator_address=localhost:{port}", "--process_count=2",
             f"--process_index={i}"] + (["--overwrite"] if attempt else []))
  return distributed_testlib.run_processes(command, 2, env, REPO)


def test_two_processes_of_four_devices_give_one_devices_results(meshes):
  """2 processes x 4 devices (mesh data=4 model=2): each feeds its rows, process 0 writes."""
  root, _, _ = meshes
  checkpoint = str(root / "run" / "checkpoint_10")
  outs = _two_processes(["eval", "--checkpoint", checkpoint, "--output_dir", str(root / "two"),
                         "--suite", SUITE, "--max_examples", ROWS, "--batch_size", "4"])
  assert "mesh data=4 model=2 on 8 devices, 2 processes" in outs[0]
  assert "Wrote results.json" in outs[0] and "Wrote results.json" not in outs[1]
  one = json.loads((root / "one" / "results.json").read_text())["prompts"]
  two = json.loads((root / "two" / "results.json").read_text())["prompts"]
  assert [(p["prompt"], p["accuracy"]) for p in one] == [(p["prompt"], p["accuracy"]) for p in two]
  a, b = _examples(root / "one"), _examples(root / "two")
  assert a.keys() == b.keys()
  for key in a:
    assert a[key]["prediction"] == b[key]["prediction"], key
    np.testing.assert_allclose(a[key]["scores"], b[key]["scores"], rtol=1e-6, atol=1e-5)
  # xmtf infer the same way: greedy outputs equal one device's, written once.
  _two_processes(["infer", "--checkpoint", checkpoint, "--output_dir", str(root / "greedy-two"),
                  "--input_file", str(root / "prompts.jsonl"), "--decoding", "greedy",
                  "--batch_size", "3", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"])
  name = "prompts-predict.jsonl-00000-of-00001"
  one_rows = (root / "greedy-one" / name).read_text().splitlines()
  two_rows = (root / "greedy-two" / name).read_text().splitlines()
  assert [json.loads(r)["prediction"] for r in one_rows] == [json.loads(r)["prediction"]
                                                             for r in two_rows]


def test_select_checkpoint_scores_the_same_on_a_mesh(meshes):
  root, stdout, report = meshes
  assert report["select"] == 0
  assert "on mesh data=4 model=2 on 8 devices, 1 process" in stdout

  def record(run):
    path = next((root / run / "validation").rglob("checkpoint_10.json"))
    return json.loads(path.read_text())["prompts"]
  one, mesh = record("run_select_one"), record("run_select_mesh")
  assert [(p["prompt"], p["accuracy"]) for p in one] == [(p["prompt"], p["accuracy"]) for p in mesh]
