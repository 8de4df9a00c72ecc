"""Bad input to evaluation and inference: each a clear error or a reported count."""

import json

import pytest
from eval_testlib import (
  SAMPLE_VOCAB_CONFIG,
  random_params,
  sample_vocabulary,
  spm_binding,
  write_checkpoints,
)

import gin
from tasks import heldout
from xmtf_pipeline import cli, evaluation, inference, models


@pytest.fixture(autouse=True)
def clean_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def tiny():
  return models.EncoderDecoderModel(SAMPLE_VOCAB_CONFIG), random_params(SAMPLE_VOCAB_CONFIG)


def _eval_flags(**macros):
  return (["eval", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/eval.gin", spm_binding()]
          + [f"--gin.{k}={v}" for k, v in macros.items()])


def test_unknown_suite_fails_before_loading_anything(tmp_path, capsys):
  rc = cli.main(_eval_flags(CHECKPOINT_PATH='"/no/such/checkpoint"',
                            EVAL_OUTPUT_DIR=f'"{tmp_path}"', MIXTURE_OR_TASK_NAME='"xnli,glue"'))
  err = capsys.readouterr().err
  assert rc == 2
  assert "Unknown suite, dataset or task 'glue'" in err and "heldout_l1" in err


def test_missing_required_macro_and_missing_checkpoint(tmp_path, capsys):
  assert cli.main(_eval_flags(EVAL_OUTPUT_DIR=f'"{tmp_path}"', MIXTURE_OR_TASK_NAME='"copa"')) == 2
  assert "CHECKPOINT_PATH set to %gin.REQUIRED" in capsys.readouterr().err
  assert cli.main(_eval_flags(CHECKPOINT_PATH='"/no/such/checkpoint"', EVAL_OUTPUT_DIR=f'"{tmp_path}"',
                              MIXTURE_OR_TASK_NAME='"copa"')) == 2
  assert "CHECKPOINT_PATH /no/such/checkpoint does not exist" in capsys.readouterr().err


def test_checkpoint_for_another_vocabulary_size(tmp_path, capsys):
  """A checkpoint with 256 embeddings evaluated as mt5_tiny (512): named parameter, both shapes."""
  write_checkpoints(tmp_path / "run", SAMPLE_VOCAB_CONFIG.replace(vocab_size=256, emb_dim=64,
                                                                  head_dim=16, mlp_dim=128))
  rc = cli.main(_eval_flags(CHECKPOINT_PATH=f'"{tmp_path}/run"', EVAL_OUTPUT_DIR=f'"{tmp_path}"',
                            MIXTURE_OR_TASK_NAME='"copa"', DATA_DIR=f'"{heldout.BUNDLED_DIR}"'))
  err = capsys.readouterr().err
  assert rc == 2
  assert "CHECKPOINT_PATH" in err and "INITIAL_" not in err and "In call to" not in err
  assert "(64, 256)" in err and "(64, 512)" in err and "another model size or vocabulary" in err


def test_vocabulary_larger_than_the_embeddings(tiny):
  model = models.EncoderDecoderModel(SAMPLE_VOCAB_CONFIG.replace(vocab_size=256))
  with pytest.raises(evaluation.EvalError, match=r"500 ids \(400 pieces \+ 100 extra ids\) but the model has only 256 embeddings"):
    evaluation.evaluate_suite(model, None, sample_vocabulary(), "copa")


def test_empty_dataset_is_a_clear_error(tmp_path, tiny):
  (tmp_path / "copa" / "copa").mkdir(parents=True)
  (tmp_path / "copa" / "copa" / "validation.jsonl").write_text("")
  with pytest.raises(heldout.HeldOutError, match=r"copa/copa split validation"):
    evaluation.evaluate_suite(*tiny, sample_vocabulary(), "copa", str(tmp_path))


def test_gold_target_not_among_the_answer_choices():
  broken = heldout.Prompt("broken", "{{premise}} ||| {{ choice1 }}!", "{{choice1}} ||| {{choice2}}")
  row = {"premise": "P.", "choice1": "A", "choice2": "B", "label": 0}
  with pytest.raises(heldout.HeldOutError, match=r"gold target 'A!' is not one of the answer "
                                                 r"choices \['A', 'B'\]"):
    heldout.render(broken, row, " (copa/copa row 0)")
  generative = heldout.Prompt("gen", "{{premise}} ||| {{choice1}}", None)
  with pytest.raises(heldout.HeldOutError, match="generative"):
    heldout.render(generative, row)


def test_prompts_longer_than_the_feature_length_are_truncated_and_counted(tiny):
  results = evaluation.evaluate_suite(*tiny, sample_vocabulary(), "heldout_cb_gpt_3_style",
                                      str(heldout.BUNDLED_DIR), max_examples=6,
                                      feature_lengths={"inputs": 24, "targets": 3}, log=None)
  (r,) = results
  assert r.num_examples == 6 and r.truncated_inputs == 6 and r.accuracy is not None
  vocab = sample_vocabulary()
  too_long = sum(len(vocab.encode(" " + c)) + 1 > 3 for c in ("True", "False", "Neither"))
  assert too_long and r.truncated_targets == 6 * too_long  # every over-long choice counted
  left = evaluation.evaluate_suite(*tiny, sample_vocabulary(), "heldout_cb_gpt_3_style",
                                   str(heldout.BUNDLED_DIR), max_examples=6,
                                   feature_lengths={"inputs": 24}, truncate_side="left", log=None)
  assert left[0].truncated_inputs == 6


def test_unknown_dataset_config_and_missing_manual_data(tmp_path):
  with pytest.raises(heldout.HeldOutError, match="no config 'xx'"):
    heldout.load_rows("xnli", "xx")
  with pytest.raises(heldout.HeldOutError, match="StoryCloze|not public"):
    heldout.load_rows("story_cloze", "2016", str(tmp_path))


def test_bad_infer_inputs(tmp_path, tiny):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"inputs": "ok"}\nnot json\n')
  with pytest.raises(inference.InferError, match=r"bad.jsonl:2: not JSON"):
    inference.read_jsonl(str(bad), "predict")
  bad.write_text('{"inputs": "no targets"}\n')
  with pytest.raises(inference.InferError, match=r"bad.jsonl:1: score mode needs 'targets'"):
    inference.read_jsonl(str(bad), "score")
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(inference.InferError, match="holds no rows"):
    inference.read_jsonl(str(empty), "predict")
  model, params = tiny
  for kwargs, match in (({"decoding_method": "nucleus"}, "DECODING must be one of"),
                        ({"decoding_method": "sample", "temperature": 0.0}, "temperature"),
                        ({"mode": "generate"}, "INFER_MODE must be one of")):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"inputs": "hi"}) + "\n")
    with pytest.raises(inference.InferError, match=match):
      inference.infer(model=model, checkpoint_path="unused", output_dir=str(tmp_path),
                      vocabulary=sample_vocabulary(), input_file=str(good), params=params,
                      **kwargs)
