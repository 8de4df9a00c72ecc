"""``xmtf bench train --check``: each speed option against the plain path, on the device.

The CPU test suite proves the options exact in float32 (tests/test_speed_levers.py);
this reruns the comparison where the fast kernels actually run (cuDNN attention
exists only on GPUs) and in bfloat16, the training dtype. Same parameters, same
batch, dropout off; reported per option: the loss's relative difference, the whole
gradient's (||g - g_ref|| / ||g_ref||), and both relative-position tables' gradients,
whose loss in a fused kernel would otherwise go unnoticed (a zero there is flagged).
"""

from __future__ import annotations

import numpy as np

# (name, T5Config options, loss_chunk_length)
LEVERS = (
    ("scan + remat dots_no_batch", {"scan_layers": True, "remat_policy": "dots_no_batch"}, 0),
    ("chunked CE (64)", {}, 64),
    ("bf16 LM head", {"head_dtype": "bfloat16"}, 0),
    ("dot_product_attention (XLA)", {"attention_impl": "dot_product_attention"}, 0),
    ("cuDNN attention", {"attention_impl": "cudnn"}, 0),
    ("cuDNN attention, packed rows", {"attention_impl": "cudnn"}, 0),
)
# Relative tolerances: float32 differs only by summation order; bf16 paths round differently.
TOLERANCE = {"float32": (1e-5, 1e-4), "bfloat16": (2e-2, 5e-2)}


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def run_checks(model: str, batch: int, len_in: int, len_out: int,
               dtypes: tuple[str, ...] = ("float32", "bfloat16"), on_row=None) -> list[dict]:
  """Each lever's row; ``on_row(row)`` is called as each is done (a timeout keeps them)."""
  import jax

  from xmtf_pipeline import layer_stacking, models, params
  from xmtf_pipeline.tools import bench_workload as bench

  data = bench.synthetic_batch(batch, len_in, len_out, bench.model_config(model).vocab_size,
                               seed=5)
  # Unequal lengths, so masks matter: row i keeps a different number of real tokens.
  keep_in = np.linspace(len_in, max(1, len_in // 3), batch).astype(int)
  keep_out = np.linspace(len_out, max(1, len_out // 2), batch).astype(int)
  enc, tgt = data["encoder_input_tokens"], data["decoder_target_tokens"]
  for i in range(batch):
    enc[i, keep_in[i]:] = 0
    tgt[i, keep_out[i]:] = 0
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
  data = {"encoder_input_tokens": enc, "decoder_target_tokens": tgt, "decoder_input_tokens": dec,
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}
  # The same rows as two packed segments each (segment masks instead of lengths).
  packed = dict(data)
  packed["encoder_segment_ids"] = np.where(np.arange(len_in) < len_in // 2, 1, 2) * (enc > 0)
  packed["decoder_segment_ids"] = np.where(np.arange(len_out) < len_out // 2, 1, 2) * (tgt > 0)
  packed["encoder_positions"] = np.zeros_like(enc)
  packed["decoder_positions"] = np.zeros_like(tgt)
  batches = {False: data, True: packed}
  batches = {k: {n: jax.numpy.asarray(v) for n, v in b.items()} for k, b in batches.items()}
  rows = []
  for dtype in dtypes:
    base_cfg = bench.model_config(model, dtype=dtype, dropout=0.0)
    p = params.init_params(base_cfg, jax.random.PRNGKey(0))

    def grads(cfg, chunk, q, is_packed=False):
      m = models.EncoderDecoderModel(cfg, loss_normalizing_factor="AVERAGE_PER_SEQUENCE",
                                     loss_chunk_length=chunk)
      norm, w = m.normalizer_and_weights(batches[is_packed])
      b = dict(batches[is_packed], decoder_loss_weights=w)
      fn = jax.jit(jax.value_and_grad(lambda x: m.loss_fn(x, b, None, norm)[0]))
      with jax.default_matmul_precision("highest" if cfg.dtype == "float32" else "default"):
        loss, g = fn(q)
      if cfg.scan_layers:
        g = layer_stacking.unstack(g, cfg.replace(scan_layers=False))
      return float(loss), params.flatten(jax.device_get(g))

    refs = {k: grads(base_cfg, 0, p, k) for k in (False, True)}
    for name, options, chunk in LEVERS:
      is_packed = "packed" in name
      ref_loss, ref = refs[is_packed]
      cfg = base_cfg.replace(**options)
      row = {"lever": name, "dtype": dtype}
      try:
        q = layer_stacking.stack(p, base_cfg) if cfg.scan_layers else p
        loss, g = grads(cfg, chunk, q, is_packed)
      except Exception as e:  # e.g. cuDNN attention where there is no cuDNN
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        rows.append(row)
        if on_row:
          on_row(row)
        continue
      keys = sorted(ref)
      row["loss_rel"] = abs(loss - ref_loss) / abs(ref_loss)
      row["grad_rel"] = _rel(np.concatenate([g[k].ravel() for k in keys]),
                             np.concatenate([ref[k].ravel() for k in keys]))
      for stack in ("encoder", "decoder"):
        k = f"{stack}/relpos_bias/rel_embedding"
        row[f"{stack}_relpos_grad_rel"] = _rel(g[k], ref[k])
        row[f"{stack}_relpos_grad_zero"] = bool(np.all(g[k] == 0))
      # The bf16 head rounds the head's inputs by design: bf16 tolerances in both dtypes.
      loss_tol, grad_tol = TOLERANCE["bfloat16" if "bf16" in name else dtype]
      row["ok"] = (row["loss_rel"] <= loss_tol and row["grad_rel"] <= grad_tol
                   and not row["encoder_relpos_grad_zero"] and not row["decoder_relpos_grad_zero"])
      rows.append(row)
      if on_row:
        on_row(row)
  return rows


def checks_table(rows: list[dict]) -> str:
  lines = [f"{'lever':<30}{'dtype':<10}{'loss rel':>10}{'grad rel':>10}{'enc relpos':>11}"
           f"{'dec relpos':>11}  ok"]
  for r in rows:
    if "error" in r:
      lines.append(f"{r['lever']:<30}{r['dtype']:<10}  not run: {r['error']}")
      continue
    lines.append(f"{r['lever']:<30}{r['dtype']:<10}{r['loss_rel']:>10.1e}{r['grad_rel']:>10.1e}"
                 f"{r['encoder_relpos_grad_rel']:>11.1e}{r['decoder_relpos_grad_rel']:>11.1e}"
                 f"  {'yes' if r['ok'] else 'NO'}")
  return "\n".join(lines)
