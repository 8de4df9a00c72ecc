"""xmtf eval / infer / select-checkpoint end to end on tiny checkpoints and the bundled rows."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from eval_testlib import greedy, sample_vocabulary, spm_binding, write_checkpoints

import gin
from tasks import heldout
from xmtf_pipeline import cli, evaluation, gin_config
from xmtf_pipeline.interop import restore


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A MODEL_DIR with two checkpoints of the tiny model (gin/models/mt5_tiny.gin)."""
  path = tmp_path_factory.mktemp("run")
  write_checkpoints(path, gin_config.load_model_config("mt5_tiny"), steps=(10, 20))
  return path


@pytest.fixture(autouse=True)
def clean_gin():
  yield
  gin.clear_config()


def _flags(run_file: str, **macros) -> list[str]:
  return (["--gin_file=models/mt5_tiny.gin", f"--gin_file=runs/{run_file}", spm_binding()]
          + [f"--gin.{k}={v}" for k, v in macros.items()])


def test_help_lists_the_eval_commands():
  out = subprocess.run([sys.executable, "-m", "xmtf_pipeline.cli", "--help"], capture_output=True,
                       text=True, check=True).stdout
  for command in ("eval", "infer", "select-checkpoint"):
    assert command in out


def test_xmtf_eval_writes_the_model_card_results(run_dir, tmp_path, capsys):
  out_dir = tmp_path / "eval"
  rc = cli.main(["eval", *_flags("eval.gin", CHECKPOINT_PATH=f'"{run_dir}/checkpoint_10"',
                                 EVAL_OUTPUT_DIR=f'"{out_dir}"',
                                 MIXTURE_OR_TASK_NAME='"copa,heldout_winogrande"',
                                 EVALUATOR_NUM_EXAMPLES=8, BATCH_SIZE=8,
                                 DATA_DIR=f'"{heldout.BUNDLED_DIR}"', MODEL_NAME='"tiny"')])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "| copa | copa |" in out and "Wrote results.json" in out
  summary = json.loads((out_dir / "results.json").read_text())
  assert len(summary["prompts"]) == 10 and {c["num_examples"] for c in summary["configs"]} == {8}
  meta = summary["meta"]  # speed: scoring apart from the compilation done ahead of it
  assert meta["examples"] == 80 and meta["examples_per_second"] > 0
  assert meta["shapes_compiled"] >= 0 and meta["compile_seconds"] >= 0
  assert "new scoring shapes in" in out and "Scored 80 examples in" in out
  index = yaml.safe_load((out_dir / "model_index.yaml").read_text())["model-index"]
  assert index[0]["name"] == "tiny" and len(index[0]["results"]) == 2
  assert (out_dir / "charts" / "sentence_completion.png").is_file()
  # One jsonl per prompt: each scored row's index, choice scores, prediction and label.
  files = sorted((out_dir / "examples").rglob("*.jsonl"))
  assert len(files) == 10 and "and 10 per-example files (examples/)" in out
  for prompt in summary["prompts"]:
    path = out_dir / "examples" / prompt["dataset"] / prompt["config"]
    rows = [json.loads(line) for f in path.glob("*.jsonl") for line in f.read_text().splitlines()
            if json.loads(line)["prompt"] == prompt["prompt"]]
    assert len(rows) == prompt["num_examples"] == 8
    assert sorted(r["index"] for r in rows) == list(range(8))  # every bundled row is labeled
    for r in rows:
      assert len(r["scores"]) >= 2 and all(s < 0 for s in r["scores"])
      assert r["prediction"] == int(np.argmax(r["scores"])) and r["label"] in range(len(r["scores"]))
    correct = sum(r["prediction"] == r["label"] for r in rows)
    assert prompt["accuracy"] == pytest.approx(100 * correct / len(rows))


def test_hf_checkpoint_folder_loads_the_same_parameters(run_dir, tmp_path):
  """CHECKPOINT_PATH may be an HF MT5 folder (e.g. bigscience/mt0-large downloaded)."""
  from hf_reference import save_hf_checkpoint

  from xmtf_pipeline import params as params_lib
  config = gin_config.load_model_config("mt5_tiny")
  ours = restore.restore_params(f"{run_dir}/checkpoint_10", config)
  save_hf_checkpoint(params_lib.flatten(ours), config, str(tmp_path / "hf"))
  theirs = restore.restore_params(str(tmp_path / "hf"), config)
  flat_ours, flat_theirs = params_lib.flatten(ours), params_lib.flatten(theirs)
  assert sorted(flat_ours) == sorted(flat_theirs)
  for k in flat_ours:
    np.testing.assert_array_equal(np.asarray(flat_ours[k]), np.asarray(flat_theirs[k]))


def test_xmtf_infer_predict_and_score(run_dir, tmp_path, capsys):
  rows = [{"inputs": "Translate to French: cat", "targets": "chat"},
          {"inputs": "Is the sky blue? Yes or no?", "choices": ["Yes", "No"]},
          {"inputs": "Write a word.", "targets": "word"}]
  src = tmp_path / "prompts.jsonl"
  src.write_text("".join(json.dumps(r) + "\n" for r in rows))
  common = dict(CHECKPOINT_PATH=f'"{run_dir}/checkpoint_20"', INFER_OUTPUT_DIR=f'"{tmp_path}"',
                INPUT_FILE=f'"{src}"', TASK_FEATURE_LENGTHS="{'inputs': 32, 'targets': 6}",
                BATCH_SIZE=4)
  outputs = {}
  for decoding_method in ("greedy", "beam", "sample"):
    again = ["--overwrite"] if outputs else []  # each run replaces the previous one's file
    assert cli.main(["infer", *_flags("infer.gin", **common,
                                      DECODING=f'"{decoding_method}"'), *again]) == 0
    path = tmp_path / "prompts-predict.jsonl-00000-of-00001"
    outputs[decoding_method] = [json.loads(line) for line in path.read_text().splitlines()]
    assert [o["inputs"] for o in outputs[decoding_method]] == [r["inputs"] for r in rows]
  # greedy equals the decoder run directly on the same tokens (inputs end in EOS).
  vocab = sample_vocabulary()
  config = gin_config.load_model_config("mt5_tiny")
  params = restore.restore_params(f"{run_dir}/checkpoint_20", config)
  enc = np.zeros((4, 32), np.int32)
  for i, r in enumerate(rows):
    ids = list(vocab.encode(r["inputs"])) + [1]
    enc[i, :len(ids)] = ids
  from xmtf_pipeline.network import Transformer
  direct = np.asarray(greedy(Transformer(config), params, jnp.asarray(enc), 6))
  for i, o in enumerate(outputs["greedy"]):
    ids = [int(t) for t in direct[i]]
    ids = ids[:ids.index(1)] if 1 in ids else ids
    assert o["prediction"] == vocab.decode(ids)
  assert all("score" in o["aux"] for o in outputs["beam"] + outputs["sample"])
  assert cli.main(["infer", *_flags("infer.gin", **common, INFER_MODE='"score"')]) == 0
  scored = [json.loads(line) for line in
            (tmp_path / "prompts-score.jsonl-00000-of-00001").read_text().splitlines()]
  assert scored[0]["score"] < 0 and len(scored[1]["scores"]) == 2
  assert scored[1]["prediction"] == ["Yes", "No"][int(np.argmax(scored[1]["scores"]))]
  assert "score: 3 rows" in capsys.readouterr().out
  # A SeqIO task as input: the held-out task's rank-classification rows (one per choice).
  task_flags = {k: v for k, v in common.items() if k != "INPUT_FILE"}
  assert cli.main(["infer", *_flags(
      "infer.gin", **task_flags, INFER_MODE='"score"', INFER_NUM_EXAMPLES=4,
      MIXTURE_OR_TASK_NAME='"heldout_copa_best_option"',
      **{"tasks.heldout.data_config.data_dir": f'"{heldout.BUNDLED_DIR}"'})]) == 0
  task_rows = [json.loads(line) for line in (
      tmp_path / "heldout_copa_best_option-score.jsonl-00000-of-00001").read_text().splitlines()]
  assert [r["targets"] for r in task_rows[:2]] == [" The toilet filled with water.",
                                                   " Water flowed from the spout."]
  assert task_rows[0]["inputs"].startswith("The man turned on the faucet.")


def test_select_checkpoint_says_which_and_why(run_dir, capsys):
  argv = ["select-checkpoint", "--model_dir", str(run_dir), "--suite", "copa",
          "--data_dir", str(heldout.BUNDLED_DIR), "--max_examples", "8", "--model", "mt5_tiny",
          "--spm_model", str(heldout.DATA_ROOT.parent / "spm" / "xp3_sample.model")]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  record = json.loads((run_dir / "validation" / "copa@8" / "selection.json").read_text())
  scores = {int(k): v for k, v in record["scores"].items()}
  assert set(scores) == {10, 20}
  best = max(scores, key=lambda s: (scores[s], -s))
  assert record["best_step"] == best
  assert f"checkpoint_{best} has the highest mean over (dataset, config) of the median" in out
  assert "held-out TEST datasets" in out
  assert cli.main(argv) == 0  # second time: the stored scores are reused, nothing re-evaluated
  assert "stored validation results" in capsys.readouterr().out


def test_run_suite_is_the_demo_hook(run_dir):
  from xmtf_pipeline import models
  config = gin_config.load_model_config("mt5_tiny")
  params = restore.restore_params(f"{run_dir}/checkpoint_20", config)
  table = evaluation.run_suite(models.EncoderDecoderModel(config), params, sample_vocabulary(),
                               datasets=("copa", "rte"), max_examples=4)
  assert table.splitlines()[0].startswith("| dataset | config | median over prompts")
  assert "| rte | rte |" in table and "| copa | copa |" in table and "64.26" in table


@pytest.mark.parametrize("command,wanted", [
    ("eval", ["--checkpoint", "CHECKPOINT_PATH", "Hugging Face", "T5X", "--output_dir",
              "EVAL_OUTPUT_DIR", "--suite", "MIXTURE_OR_TASK_NAME", "--data_dir", "DATA_DIR",
              "--spm_model", "mt5_vocabulary_config.path", "--batch_size", "BATCH_SIZE",
              "--max_examples", "EVALUATOR_NUM_EXAMPLES", "results.json", "results.md",
              "model_index.yaml", "charts/", "--overwrite",
              "xmtf eval --checkpoint mt0-small --suite heldout_bundled --output_dir",
              "--gin_file=runs/eval.gin"]),
    ("infer", ["--checkpoint", "CHECKPOINT_PATH", "--output_dir", "INFER_OUTPUT_DIR",
               "--input_file", "INPUT_FILE", "--task", "--mode", "INFER_MODE", "--decoding",
               "--spm_model", "--batch_size", "--max_examples", "INFER_NUM_EXAMPLES",
               "<input name>-<mode>.jsonl-00000-of-00001", "--overwrite",
               "xmtf infer --checkpoint"]),
    ("select-checkpoint", ["--model_dir", "--suite", "--data_dir", "--spm_model",
                           "--batch_size", "--max_examples", "selection.json",
                           "xmtf select-checkpoint --model_dir"]),
])
def test_help_says_what_the_command_does_and_its_settings(command, wanted, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([command, "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert "Train or finetune" not in out
  flat = " ".join(out.split())  # argparse wraps the per-flag help
  missing = [w for w in wanted if w not in flat]
  assert not missing, out


def _macros_after(bindings: list[str]) -> dict:
  from tasks import vocab  # noqa: F401  (registers tasks.vocab for the query)
  gin_config.parse(["models/mt5_tiny.gin", "runs/eval.gin"], bindings, finalize=False)
  got = {m: gin_config.evaluate(f"%{m}") for m in (
      "CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME", "DATA_DIR", "BATCH_SIZE",
      "EVALUATOR_NUM_EXAMPLES")}
  got["spm"] = gin.query_parameter("tasks.vocab.mt5_vocabulary_config.path")
  gin.clear_config()
  return got


def test_plain_flags_are_the_gin_bindings_of_the_gin_form():
  from xmtf_pipeline import flags
  plain = evaluation._eval_plain_flags()
  parser = flags.build_arg_parser("xmtf eval", "")
  flags.add_plain_flags(parser, plain)
  args = parser.parse_args(["--checkpoint", "/ckpt/hf", "--output_dir", "/tmp/out dir",
                            "--suite", "heldout_bundled", "--data_dir", "/data",
                            "--spm_model", "/v/spiece.model", "--batch_size", "8",
                            "--max_examples", "4"])
  sugar = flags.plain_bindings(args, plain)
  gin_form = [a.split("=", 1)[1] for a in gin_config.rewrite_gin_args([
      '--gin.CHECKPOINT_PATH="/ckpt/hf"', '--gin.EVAL_OUTPUT_DIR="/tmp/out dir"',
      '--gin.MIXTURE_OR_TASK_NAME="heldout_bundled"', '--gin.DATA_DIR="/data"',
      '--gin.tasks.vocab.mt5_vocabulary_config.path="/v/spiece.model"', "--gin.BATCH_SIZE=8",
      "--gin.EVALUATOR_NUM_EXAMPLES=4"])]
  assert [b.split("=", 1)[0].strip() for b in sugar] == [b.split("=", 1)[0].strip()
                                                         for b in gin_form]
  assert _macros_after(sugar) == _macros_after(gin_form) == {
      "CHECKPOINT_PATH": "/ckpt/hf", "EVAL_OUTPUT_DIR": "/tmp/out dir",
      "MIXTURE_OR_TASK_NAME": "heldout_bundled", "DATA_DIR": "/data", "BATCH_SIZE": 8,
      "EVALUATOR_NUM_EXAMPLES": 4, "spm": "/v/spiece.model"}


def test_plain_flag_and_its_gin_binding_together_fail(capsys):
  rc = cli.main(["eval", "--checkpoint", "/a", '--gin.CHECKPOINT_PATH="/b"', "--suite", "copa"])
  err = capsys.readouterr().err
  assert rc == 2
  assert "--checkpoint and --gin.CHECKPOINT_PATH both set CHECKPOINT_PATH" in err
  assert len(err.strip().splitlines()) == 1


def test_plain_flags_on_our_run_dir_need_no_gin_file(run_dir, tmp_path, capsys):
  """Plain flags alone: runs/eval.gin is implied, --model names the model gin."""
  out_dir = tmp_path / "eval"
  rc = cli.main(["eval", "--model", "mt5_tiny", "--checkpoint", f"{run_dir}/checkpoint_10",
                 "--output_dir", str(out_dir), "--suite", "copa", "--max_examples", "4",
                 "--batch_size", "4", "--data_dir", str(heldout.BUNDLED_DIR),
                 "--spm_model", str(heldout.DATA_ROOT.parent / "spm" / "xp3_sample.model")])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "Vocabulary: " in out and "set by --spm_model" in out
  assert (out_dir / "results.md").is_file()
