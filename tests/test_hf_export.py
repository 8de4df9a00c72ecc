"""``xmtf export-hf``: the HF directory loads offline, matches our logits and greedy outputs,
keeps the head untied, and a plain transformers script (no xmtf import) generates from it."""

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import ci_demo
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
import torch
import yaml
from interop_testlib import (
  SPM,
  TINY,
  export_our_checkpoint,
  operative_config,
  our_logits,
  padded_batch,
  read_json,
  rel_err,
  save_our_checkpoint,
  shift_right,
)

from xmtf_pipeline import cli, decoding, params
from xmtf_pipeline.network import Transformer
from xmtf_pipeline.params import ParamMismatchError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  return export_our_checkpoint(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def hf_model(exported):
  from transformers import AutoModelForSeq2SeqLM
  return AutoModelForSeq2SeqLM.from_pretrained(str(exported[2])).eval()


def test_export_writes_the_mt0_file_set(exported):
  ckpt, _, out = exported
  assert sorted(os.listdir(out)) == sorted([
      "config.json", "generation_config.json", "model.safetensors", "spiece.model",
      "tokenizer_config.json", "special_tokens_map.json", "README.md"])
  cfg = read_json(out / "config.json")
  expect = {"model_type": "mt5", "architectures": ["MT5ForConditionalGeneration"],
            "d_model": 64, "d_ff": 128, "num_heads": 4, "d_kv": 16, "num_layers": 2,
            "num_decoder_layers": 2, "vocab_size": 512, "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
            "dropout_rate": 0.1, "torch_dtype": "float32"}
  assert {k: cfg[k] for k in expect} == expect
  assert read_json(out / "generation_config.json") == {
      "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
  tok = read_json(out / "tokenizer_config.json")
  assert tok["tokenizer_class"] == "T5Tokenizer" and tok["extra_ids"] == 100
  assert read_json(out / "special_tokens_map.json") == {
      "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
  with open(out / "spiece.model", "rb") as a, open(SPM, "rb") as b:
    assert a.read() == b.read()
  card = (out / "README.md").read_text()
  front = yaml.safe_load(card.split("---")[1])
  assert front["pipeline_tag"] == "text2text-generation" and front["datasets"] == ["bigscience/xP3"]
  for text in (f"{params.count(TINY):,}", "step 7", "'AVERAGE_PER_SEQUENCE'", "untied", ckpt,
               "byte_fallback"):
    assert text in card


def test_head_is_untied_after_load(exported, hf_model):
  _, tree, _ = exported
  head, shared = hf_model.lm_head.weight, hf_model.shared.weight
  assert head.data_ptr() != shared.data_ptr() and not torch.equal(head, shared)
  np.testing.assert_array_equal(head.detach().numpy(),
                                np.asarray(tree["decoder"]["logits_dense"]["kernel"]).T)
  np.testing.assert_array_equal(shared.detach().numpy(),
                                np.asarray(tree["token_embedder"]["embedding"]))
  # The exact count includes the separate head (a tied head would be 512 x 64 fewer).
  assert sum(p.numel() for p in hf_model.parameters()) == params.count(TINY)


def test_logits_match_ours(exported, hf_model):
  _, tree, _ = exported
  enc, tgt = padded_batch(TINY.vocab_size)
  ours = our_logits(TINY, tree, enc, tgt)
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                      attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                      decoder_input_ids=torch.tensor(shift_right(tgt), dtype=torch.long),
                      decoder_attention_mask=torch.tensor(tgt > 0, dtype=torch.long)).logits.numpy()
  valid = tgt > 0
  assert rel_err(ours[valid], theirs[valid]) <= 1e-5


def _hf_greedy(model, enc, max_length):
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                         attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                         do_sample=False, num_beams=1, max_new_tokens=max_length,
                         min_new_tokens=max_length).numpy()
  return out[:, 1:]  # drop the decoder start token


def test_greedy_generation_is_token_identical(exported, hf_model):
  _, tree, _ = exported
  enc, _ = padded_batch(TINY.vocab_size, lengths_in=(10, 4, 7, 9), lengths_out=(2, 2, 2, 2),
                        seed=3)
  max_length = 12
  ours = np.asarray(decoding.greedy_decode(Transformer(TINY), tree, jnp.asarray(enc), max_length,
                                           eos_id=-1))  # no EOS stop: compare all 12 steps
  theirs = _hf_greedy(hf_model, enc, max_length)
  np.testing.assert_array_equal(ours, theirs)
  assert len(np.unique(ours)) > 4  # a real sequence, not one repeated token


def test_tokenizer_loads_offline(exported):
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(str(exported[2]))
  assert len(tok) == 500 and (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
  # seqio's sentinel layout: <extra_id_0> is the last id.
  assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [499, 400]
  sp = spm.SentencePieceProcessor(model_file=SPM)
  text = "what is the first word of the following text"
  assert tok(text).input_ids == sp.encode(text) + [1]
  assert tok.decode(sp.encode(text)) == text


def test_sharded_bfloat16_export(exported, tmp_path):
  from transformers import AutoModelForSeq2SeqLM
  ckpt, tree, _ = exported
  out = tmp_path / "bf16"
  assert cli.main(["export-hf", "--checkpoint_dir", os.path.dirname(ckpt), "--output_dir",
                   str(out), "--dtype", "bfloat16", "--max_shard_size", "200KB"]) == 0
  index = read_json(out / "model.safetensors.index.json")
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 2 and all((out / s).stat().st_size <= 200_000 + 140_000 for s in shards)
  assert index["metadata"]["total_size"] == params.count(TINY) * 2
  model = AutoModelForSeq2SeqLM.from_pretrained(str(out))
  assert model.dtype == torch.bfloat16
  want = torch.tensor(np.asarray(tree["decoder"]["logits_dense"]["kernel"]).T).to(torch.bfloat16)
  assert torch.equal(model.lm_head.weight, want)  # same rounding as torch's


def test_model_card_carries_eval_results(tmp_path):
  ckpt, _, _ = save_our_checkpoint(str(tmp_path / "run"))
  results = tmp_path / "run" / "eval_results"
  results.mkdir()
  (results / "results.md").write_text("| dataset | accuracy |\n|---|---|\n| xcopa/sw | 51.2 |\n")
  index = [{"name": "run", "results": [{"task": {"type": "text-classification"},
                                        "dataset": {"type": "xcopa", "name": "XCOPA",
                                                    "config": "sw", "split": "validation"},
                                        "metrics": [{"type": "accuracy", "value": 51.2}]}]}]
  (results / "model_index.yaml").write_text(yaml.safe_dump({"model-index": index}))
  out = tmp_path / "hf"
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out)]) == 0
  card = (out / "README.md").read_text()
  assert yaml.safe_load(card.split("---")[1])["model-index"] == index
  assert "## Evaluation results" in card and "| xcopa/sw | 51.2 |" in card


def _tree(root):
  """{relative path: bytes} of every file under root (to prove a folder was left intact)."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_refuses_existing_output_dir_unless_overwrite(exported, tmp_path, capsys):
  ckpt = exported[0]
  out = tmp_path / "taken"
  out.mkdir()
  (out / "precious.txt").write_text("keep")
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out)]) == 2
  assert "exists and is not empty" in capsys.readouterr().err
  assert (out / "precious.txt").read_text() == "keep"
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # nothing half-written left
  # The input itself is never a valid output.
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir",
                   os.path.dirname(ckpt), "--overwrite"]) == 2
  assert "contains the input" in capsys.readouterr().err and os.path.isdir(ckpt)


def test_overwrite_never_deletes_a_folder_that_is_not_an_export(exported, tmp_path, capsys):
  """--overwrite replaces an earlier export only: another run's checkpoints survive intact."""
  ckpt = exported[0]
  other_run = tmp_path / "other_run"
  save_our_checkpoint(str(other_run), step=3)
  (other_run / "notes.txt").write_text("mine")
  before = _tree(other_run)
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(other_run),
                   "--overwrite"]) == 2
  err = capsys.readouterr().err
  assert "not an earlier export" in err and "checkpoint_3" in err and "notes.txt" in err, err
  assert len(err.strip().splitlines()) == 1, err
  assert _tree(other_run) == before
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
  # An earlier export with a file of someone else's added to it is not ours either.
  export = tmp_path / "export"
  shutil.copytree(exported[2], export)
  (export / "my_eval.txt").write_text("results")
  before = _tree(export)
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(export),
                   "--overwrite"]) == 2
  assert "my_eval.txt" in capsys.readouterr().err
  assert _tree(export) == before


def test_overwrite_replaces_an_earlier_export_with_normal_permissions(exported, tmp_path, capsys):
  ckpt = exported[0]
  out = tmp_path / "hf"
  old_umask = os.umask(0o022)
  try:
    assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    (out / "README.md").write_text("---\n---\nexported with `xmtf export-hf`.\n")  # mark it
    assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out)]) == 2
    assert "holds an earlier export; pass --overwrite" in capsys.readouterr().err
    assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out),
                     "--overwrite"]) == 0
  finally:
    os.umask(old_umask)
  assert "## Model" in (out / "README.md").read_text()  # replaced by a fresh export
  assert stat.S_IMODE(out.stat().st_mode) == 0o755
  assert sorted(os.listdir(out)) == sorted(os.listdir(exported[2]))


def test_mismatching_model_is_a_clear_error(exported, tmp_path, capsys):
  assert cli.main(["export-hf", "--checkpoint_dir", exported[0], "--output_dir",
                   str(tmp_path / "o"), "--model", "mt5_small"]) == 2
  err = capsys.readouterr().err
  assert "xmtf export-hf: error:" in err and "another model size" in err
  with pytest.raises(ParamMismatchError):
    from xmtf_pipeline.interop import hf_export
    hf_export.export(exported[0], str(tmp_path / "o2"), model_config=TINY.replace(mlp_dim=256))


# --- the demo's training job, exported, then loaded by a script that never imports xmtf ---

_PLAIN_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    path, prompt = sys.argv[1], sys.argv[2]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
      out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=8)
    print(json.dumps({"input_ids": inputs.input_ids[0].tolist(), "output_ids": out[0].tolist(),
                      "text": tokenizer.decode(out[0], skip_special_tokens=True),
                      "xmtf_imported": any(m.startswith("xmtf") for m in sys.modules)}))
    """)


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
  """The demo's training job (``xmtf demo``'s gin flags: tiny mT5 on the bundled xP3 sample):
  the last checkpoint of the demo `.ci/run` ran before the suite (read only), else one step here
  with no train-eval."""
  run = ci_demo.ci_demo_run()
  if run:
    return str(run.model_dir / f"checkpoint_{run.steps}")
  from xmtf_pipeline import train as train_lib
  from xmtf_pipeline.tools import demo
  model_dir = str(tmp_path_factory.mktemp("demo") / "run")
  assert train_lib.main(demo._flags(model_dir, 1, 2, "mt5_tiny") + ["--gin.EVAL_PERIOD=0"]) == 0
  return os.path.join(model_dir, "checkpoint_1")


def test_demo_export_loads_in_plain_transformers_subprocess(demo_checkpoint, tmp_path):
  out = tmp_path / "demo_hf"
  assert cli.main(["export-hf", "--checkpoint_dir", demo_checkpoint, "--output_dir",
                   str(out)]) == 0
  env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
  prompt = "What is the first word of the following text? la casa"
  proc = subprocess.run([sys.executable, "-c", _PLAIN_SCRIPT, str(out), prompt], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert not got["xmtf_imported"]
  # The same prompt ids through our decoder give the same tokens.
  from xmtf_pipeline.gin_config import load_model_config
  from xmtf_pipeline.interop.t5x_import import open_checkpoint
  reader = open_checkpoint(demo_checkpoint)
  tree = params.unflatten({p: reader.read(f"target/{p}") for p in reader.shapes("target")})
  config = load_model_config("mt5_tiny")
  enc = jnp.asarray([got["input_ids"]], jnp.int32)
  ours = np.asarray(jax.jit(decoding.greedy_decode, static_argnums=(0, 3))(
      Transformer(config), tree, enc, 8))[0]
  theirs = np.asarray(got["output_ids"][1:])
  n = len(theirs)
  np.testing.assert_array_equal(ours[:n], theirs)


@pytest.mark.parametrize("import_line", ["import tasks.xp3", "from tasks import xp3"])
def test_export_finds_the_vocabulary_of_a_task_in_a_submodule(tmp_path, import_line):
  """A run whose task lives in tasks.xp3 (config.gin imports it; no MIXTURE_OR_TASK_MODULE, no
  vocabulary binding, no spiece.model beside the checkpoints), as `xmtf train` and upstream T5X
  write it: export-hf imports the module config.gin names and finds the task's vocabulary. A
  fresh process, so nothing registered by other tests helps."""
  from tasks import vocab as vocab_lib

  model_dir = tmp_path / "run"
  ckpt, _, _ = save_our_checkpoint(str(model_dir), write_config=False)
  text = operative_config(TINY)
  text = "\n".join(line for line in text.splitlines()
                   if "mt5_vocabulary_config" not in line)
  (model_dir / "config.gin").write_text(text.replace(
      "from xmtf_pipeline import network\n", f"from xmtf_pipeline import network\n{import_line}\n"))
  out = tmp_path / "hf"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-m", "xmtf_pipeline.cli", "export-hf",
                         "--checkpoint_dir", ckpt, "--output_dir", str(out)], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  sample = vocab_lib.sample_vocabulary().sentencepiece_model_file
  assert (out / "spiece.model").read_bytes() == open(sample, "rb").read()


def test_tokenizer_and_card_state_the_evaluation_lengths(exported):
  """HF users reproduce our eval: the tokenizer truncates prompts where our eval did (2048, the
  t-zero harness's limit, not HF's usual 1024), and the card says so."""
  from tasks import heldout

  out = exported[2]
  assert read_json(out / "tokenizer_config.json")["model_max_length"] == 2048
  from xmtf_pipeline import evaluation

  # One protocol: what export states is what `xmtf eval` (and gin/runs/eval.gin) truncates to.
  assert heldout.EVAL_FEATURE_LENGTHS == evaluation.DEFAULT_LENGTHS == {"inputs": 2048,
                                                                        "targets": 256}
  assert "TASK_FEATURE_LENGTHS = {'inputs': 2048, 'targets': 256}" in (
      REPO / "gin" / "runs" / "eval.gin").read_text()
  card = (out / "README.md").read_text()
  assert "prompts truncated to 2048 tokens from the right, answer choices to 256" in card


def test_lengths_come_from_the_runs_eval_results(tmp_path):
  """An eval of this run with other limits (results.json beside it) is what the export states,
  with the training lengths from config.gin."""
  model_dir = tmp_path / "run"
  ckpt, _, _ = save_our_checkpoint(str(model_dir), write_config=False)
  (model_dir / "config.gin").write_text(operative_config(
      TINY, {"TASK_FEATURE_LENGTHS": "{'inputs': 1024, 'targets': 1024}"}))
  (model_dir / "eval_results").mkdir()
  (model_dir / "eval_results" / "results.json").write_text(json.dumps(
      {"meta": {"feature_lengths": {"inputs": 512, "targets": 64}}}))
  out = tmp_path / "hf"
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out)]) == 0
  assert read_json(out / "tokenizer_config.json")["model_max_length"] == 512
  card = (out / "README.md").read_text()
  assert "- Training: {'inputs': 1024, 'targets': 1024} tokens" in card
  assert "prompts truncated to 512 tokens from the right, answer choices to 64" in card


def test_tokenizer_says_when_sentinels_do_not_fit(tmp_path):
  """No sentinels in the file and no room for mT5's 100 after its pieces: 0 extra ids, said in a
  warning (eval would assume 100), never silently; with room, 100 and no such warning."""
  import sentencepiece as spm

  from tasks import vocab
  from xmtf_pipeline.interop import hf_export
  spm_path = str(vocab.SAMPLE_SPM)
  pieces = spm.SentencePieceProcessor(model_file=spm_path).get_piece_size()
  for size, extra in ((pieces + 50, 0), (pieces + 100, 100)):
    out = tmp_path / str(size)
    out.mkdir()
    warnings = hf_export.write_tokenizer(str(out), spm_path, None, size)
    assert json.loads((out / "tokenizer_config.json").read_text())["extra_ids"] == extra
    said = [w for w in warnings if "sentinels" in w]
    assert bool(said) == (extra == 0), warnings
    if said:
      assert f"{pieces} pieces" in said[0] and f"{size} embeddings" in said[0]
