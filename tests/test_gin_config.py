"""Gin parsing as users meet it: typo'd macros, unquoted strings, includes whatever is on sys.path."""

from pathlib import Path

import pytest

import gin
from xmtf_pipeline import gin_config
from xmtf_pipeline import train as train_lib  # noqa: F401  (registers the trainer's configurables)

REPO = Path(__file__).resolve().parent.parent
# gin/t5x/ includes upstream T5X files absent here (tests/test_t5x_gin.py covers it).
GIN_FILES = sorted(p.relative_to(REPO / "gin").as_posix() for p in (REPO / "gin").rglob("*.gin")
                   if not p.is_relative_to(REPO / "gin" / "t5x"))
VALUES = {"DROPOUT_RATE": "0.0", "MODEL_DIR": "'/tmp/x'", "MIXTURE_OR_TASK_NAME": "'synthetic_copy'",
          "TASK_FEATURE_LENGTHS": "{'inputs': 8, 'targets': 8}", "TRAIN_STEPS": "10",
          "INITIAL_CHECKPOINT_PATH": "None", "CHECKPOINT_PATH": "'/tmp/ckpt'",
          "EVAL_OUTPUT_DIR": "'/tmp/eval'", "INFER_OUTPUT_DIR": "'/tmp/infer'"}


def _required_macros() -> list[str]:
  return sorted(scope for (scope, selector), v in gin.config._CONFIG.items()
                if selector == "gin.macro" and str(v.get("value")) == "%gin.REQUIRED")


@pytest.mark.parametrize("gin_file", GIN_FILES)
def test_every_shipped_gin_file_has_no_unread_macro(gin_file):
  """What our files set is read by something, so the typo check never fires on our own files."""
  import tasks.synthetic  # noqa: F401
  # The recipes' shared base (mt0/mt0_xp3_common.gin) has no model: it is checked as a run gin.
  shared = Path(gin_file).stem.endswith(gin_config.SHARED_BASE_SUFFIX)
  alone = gin_file.startswith("models/") or gin_file.startswith("mt0/") and not shared
  files = [gin_file] if alone else ["models/mt5_tiny.gin", gin_file]
  gin_config.parse(files, finalize=False)
  bindings = [f"{m} = {VALUES[m]}" for m in _required_macros()]
  gin_config.parse(files, bindings, finalize=False)
  # A model file alone leaves MODEL_CONFIG to the run file (or `xmtf params`) that reads it.
  gin_config.check_macros(read_by_code=["MODEL_CONFIG"] if gin_file.startswith("models/") else [])


def test_typo_in_a_macro_fails_and_suggests_the_name():
  gin_config.parse(["models/mt5_tiny.gin", "runs/finetune.gin"],
                   [f"{k} = {v}" for k, v in VALUES.items() if k in (
                       "DROPOUT_RATE", "MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS",
                       "TRAIN_STEPS", "INITIAL_CHECKPOINT_PATH")] + ["BATCH_SIZ = 8"],
                   finalize=False)
  with pytest.raises(gin_config.GinConfigError, match=r"BATCH_SIZ \(did you mean BATCH_SIZE\?\)"):
    gin_config.check_macros()


def test_macro_read_by_code_is_not_a_typo():
  gin_config.parse([], ["ONLY_CODE_READS_ME = 1"], finalize=False)
  with pytest.raises(gin_config.GinConfigError, match="ONLY_CODE_READS_ME"):
    gin_config.check_unread_macros()
  gin_config.check_unread_macros(read_by_code=["ONLY_CODE_READS_ME"])


def test_unquoted_string_value_says_to_quote_it():
  with pytest.raises(gin_config.GinConfigError) as e:
    gin_config.parse([], ["MODEL_DIR = /tmp/x"], finalize=False)
  assert '--gin.MODEL_DIR=\\"/tmp/x\\"' in str(e.value), str(e.value)


def test_a_parseable_bad_value_gets_no_quoting_hint():
  with pytest.raises(gin_config.GinConfigError) as e:
    gin_config.parse([], ["BATCH_SIZE = [1"], finalize=False)
  assert "must be quoted" not in str(e.value)


@pytest.mark.parametrize("commands", [
    ["train", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin"],
    ["eval", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/eval.gin"],
    ["infer", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/infer.gin"],
])
def test_typo_fails_in_train_eval_and_infer(commands, tmp_path, capsys):
  from xmtf_pipeline import cli
  flags = [f"--gin.{k}={v}" for k, v in VALUES.items()
           if k not in ("MODEL_DIR", "CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "INFER_OUTPUT_DIR")]
  flags += [f'--gin.MODEL_DIR="{tmp_path}/run"', f'--gin.CHECKPOINT_PATH="{tmp_path}/ckpt"',
            f'--gin.EVAL_OUTPUT_DIR="{tmp_path}/eval"', f'--gin.INFER_OUTPUT_DIR="{tmp_path}/inf"',
            "--gin.BATCH_SIZ=8"]
  rc = cli.main([*commands, *flags])
  err = capsys.readouterr().err
  assert rc == 2
  assert "BATCH_SIZ (did you mean BATCH_SIZE?)" in err, err
  assert not (tmp_path / "run").exists()


def test_plan_refuses_a_typo(capsys):
  from xmtf_pipeline.tools import planner
  rc = planner.main(["--gin_file=mt0/mt0_small_xp3.gin", "--gin.BATCH_SIZ=8", "--devices=8"])
  assert rc == 2
  assert "did you mean BATCH_SIZE?" in capsys.readouterr().out


@pytest.mark.parametrize("folder", ["runs", "models"])
def test_includes_resolve_whatever_folder_sits_on_sys_path(tmp_path, monkeypatch, folder):
  """A `runs/` or `models/` folder in a directory on sys.path (the demo's output, a user's
  models) made gin take `include 'runs/finetune.gin'` for a package and crash."""
  (tmp_path / folder / "demo").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` / PYTHONPATH put it first
  gin_config.parse(["mt0/mt0_small_xp3.gin"], ["MODEL_DIR = '/tmp/x'"], finalize=False)
  assert gin_config.evaluate("%BATCH_SIZE") == 512


def test_operative_statements_reads_wrapped_values_and_imports():
  text = ("from __gin__ import dynamic_registration\nimport tasks.xp3\n\n# Macros:\n"
          "# ====\nBATCH_SIZE = 8\nTASK_FEATURE_LENGTHS = \\\n    {'inputs': 1024,\n"
          "     'targets': 256}\n")
  got = gin_config.operative_statements(text)
  assert got["BATCH_SIZE"] == "8" and got["import tasks.xp3"] == ""
  assert got["TASK_FEATURE_LENGTHS"] == "{'inputs': 1024, 'targets': 256}"
