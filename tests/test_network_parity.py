"""Our network against HF transformers' torch MT5ForConditionalGeneration (float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from eval_testlib import random_params as _random_params
from hf_reference import load_hf_model

from xmtf_pipeline import params as params_lib
from xmtf_pipeline.network import Transformer


def _shift_right(targets):
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def _padded_batch(rng, vocab, lengths_in, lengths_out, len_in=12, len_out=9):
  enc = np.zeros((len(lengths_in), len_in), np.int32)
  tgt = np.zeros((len(lengths_out), len_out), np.int32)
  for i, (a, b) in enumerate(zip(lengths_in, lengths_out)):
    enc[i, :a] = rng.integers(2, vocab, a)
    enc[i, a - 1] = 1  # EOS
    tgt[i, :b] = rng.integers(2, vocab, b)
    tgt[i, b - 1] = 1
  return enc, tgt


def _ours(config, tree, enc, tgt, **packing):
  dec_in = packing.pop("decoder_input_tokens", None)
  if dec_in is None:
    dec_in = _shift_right(tgt)
  return np.asarray(Transformer(config).apply({"params": tree}, jnp.asarray(enc),
                                              jnp.asarray(dec_in), jnp.asarray(tgt), **packing))


def _hf(model, enc, tgt):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(_shift_right(tgt), dtype=torch.long),
                decoder_attention_mask=torch.tensor(tgt > 0, dtype=torch.long),
                labels=torch.tensor(np.where(tgt > 0, tgt, -100), dtype=torch.long))
  return out.logits.numpy(), float(out.loss)


def _rel_err(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _mean_ce(logits, tgt):
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.asarray(tgt)[..., None], axis=-1)[..., 0]
  mask = tgt > 0
  return float(jnp.sum(nll * mask) / mask.sum())


@pytest.fixture
def setup(tiny_config, tmp_path):
  tree = _random_params(tiny_config)
  model = load_hf_model(tree, tiny_config, str(tmp_path / "hf"))
  return tiny_config, tree, model


def test_hf_head_is_really_untied(setup):
  config, tree, model = setup
  head, shared = model.lm_head.weight, model.shared.weight
  assert head.data_ptr() != shared.data_ptr()
  assert not torch.equal(head, shared)
  np.testing.assert_array_equal(head.detach().numpy(),
                                np.asarray(tree["decoder"]["logits_dense"]["kernel"]).T)
  n_hf = sum(p.numel() for p in model.parameters())
  assert n_hf == params_lib.count(config)


def test_padded_batch_matches_hf(setup):
  config, tree, model = setup
  rng = np.random.default_rng(1)
  enc, tgt = _padded_batch(rng, config.vocab_size, [12, 5, 8], [9, 3, 6])
  ours = _ours(config, tree, enc, tgt)
  theirs, hf_loss = _hf(model, enc, tgt)
  valid = tgt > 0
  assert _rel_err(ours[valid], theirs[valid]) <= 1e-5
  assert abs(_mean_ce(ours, tgt) - hf_loss) <= 1e-5 * abs(hf_loss)
  # A wrong reference would not pass: zeroing one relpos table breaks parity.
  broken = jax.tree_util.tree_map(lambda x: x, tree)
  broken["decoder"]["relpos_bias"]["rel_embedding"] = jnp.zeros_like(
      tree["decoder"]["relpos_bias"]["rel_embedding"])
  assert _rel_err(_ours(config, broken, enc, tgt)[valid], theirs[valid]) > 1e-3


def test_long_sequences_use_log_buckets(setup):
  """Lengths beyond max_exact and max_distance exercise every bucket branch."""
  config, tree, model = setup
  rng = np.random.default_rng(2)
  enc, tgt = _padded_batch(rng, config.vocab_size, [150, 40], [140, 20], len_in=150, len_out=140)
  ours = _ours(config, tree, enc, tgt)
  theirs, hf_loss = _hf(model, enc, tgt)
  valid = tgt > 0
  assert _rel_err(ours[valid], theirs[valid]) <= 1e-5
  assert abs(_mean_ce(ours, tgt) - hf_loss) <= 1e-5 * abs(hf_loss)


def test_packed_row_equals_examples_alone_and_hf(setup):
  config, tree, model = setup
  rng = np.random.default_rng(3)
  lens_in, lens_out = [5, 4, 3], [4, 2, 3]
  enc1, tgt1 = _padded_batch(rng, config.vocab_size, lens_in, lens_out, len_in=5, len_out=4)
  # Pack the three examples into one row, padded at the end.
  L_in, L_out = 14, 11
  enc = np.zeros((1, L_in), np.int32)
  tgt = np.zeros((1, L_out), np.int32)
  dec_in = np.zeros((1, L_out), np.int32)
  eseg = np.zeros((1, L_in), np.int32)
  dseg = np.zeros((1, L_out), np.int32)
  epos = np.zeros((1, L_in), np.int32)
  dpos = np.zeros((1, L_out), np.int32)
  oi = oo = 0
  for s, (a, b) in enumerate(zip(lens_in, lens_out), start=1):
    enc[0, oi:oi + a] = enc1[s - 1, :a]
    eseg[0, oi:oi + a] = s
    epos[0, oi:oi + a] = np.arange(a)
    tgt[0, oo:oo + b] = tgt1[s - 1, :b]
    dec_in[0, oo:oo + b] = _shift_right(tgt1[s - 1:s, :b])[0]
    dseg[0, oo:oo + b] = s
    dpos[0, oo:oo + b] = np.arange(b)
    oi += a
    oo += b
  packed = _ours(config, tree, enc, tgt, decoder_input_tokens=dec_in,
                 encoder_segment_ids=eseg, decoder_segment_ids=dseg,
                 encoder_positions=epos, decoder_positions=dpos)
  alone = _ours(config, tree, enc1, tgt1)
  theirs, _ = _hf(model, enc1, tgt1)
  oo = 0
  for i, b in enumerate(lens_out):
    seg = packed[0, oo:oo + b]
    np.testing.assert_allclose(seg, alone[i, :b], rtol=1e-5, atol=1e-5)
    assert _rel_err(seg, theirs[i, :b]) <= 1e-5
    oo += b


def test_bfloat16_compute_close_to_float32(setup):
  config, tree, _ = setup
  rng = np.random.default_rng(4)
  enc, tgt = _padded_batch(rng, config.vocab_size, [12, 7], [9, 4])
  f32 = _ours(config, tree, enc, tgt)
  bf16 = _ours(config.replace(dtype="bfloat16"), tree, enc, tgt)
  assert bf16.dtype == np.float32  # logits_dense computes in float32
  valid = tgt > 0
  assert _rel_err(bf16[valid], f32[valid]) < 0.05
