"""T5X <-> Hugging Face ``MT5ForConditionalGeneration`` parameter names, both ways.

HF ``Linear.weight`` is (out, in) while T5X kernels are (in, out), so every
kernel is transposed; the relative-position tables live in HF block 0 only and
are transposed too ((heads, buckets) <-> (buckets, heads)). Norm scales and the
embedding keep their layout. The head is untied: ``lm_head.weight`` is its own
tensor. Conversions are lazy iterators so a caller can stream one array at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from xmtf_pipeline.network import T5Config

_ATTN = {"query": "q", "key": "k", "value": "v", "out": "o"}
_ATTN_INV = {v: k for k, v in _ATTN.items()}
_ENC_ATTN_LAYER = {"pre_attention_layer_norm": 0, "pre_mlp_layer_norm": 1}
_DEC_NORM_LAYER = {"pre_self_attention_layer_norm": 0, "pre_cross_attention_layer_norm": 1,
                   "pre_mlp_layer_norm": 2}
_DEC_ATTN = {"self_attention": (0, "SelfAttention"), "encoder_decoder_attention": (1, "EncDecAttention")}

# Keys HF keeps as aliases of ``shared.weight``.
HF_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class MappingError(ValueError):
  """A name with no counterpart on the other side."""


def to_hf_name(path: str) -> tuple[str, bool]:
  """T5X path -> (HF key, whether the array is transposed)."""
  if path == "token_embedder/embedding":
    return "shared.weight", False
  if path == "decoder/logits_dense/kernel":
    return "lm_head.weight", True
  m = re.fullmatch(r"(encoder|decoder)/relpos_bias/rel_embedding", path)
  if m:
    return f"{m[1]}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True
  m = re.fullmatch(r"(encoder|decoder)/(encoder|decoder)_norm/scale", path)
  if m and m[1] == m[2]:
    return f"{m[1]}.final_layer_norm.weight", False
  m = re.fullmatch(r"encoder/layers_(\d+)/(\w+)/scale", path)
  if m and m[2] in _ENC_ATTN_LAYER:
    return f"encoder.block.{m[1]}.layer.{_ENC_ATTN_LAYER[m[2]]}.layer_norm.weight", False
  m = re.fullmatch(r"encoder/layers_(\d+)/attention/(query|key|value|out)/kernel", path)
  if m:
    return f"encoder.block.{m[1]}.layer.0.SelfAttention.{_ATTN[m[2]]}.weight", True
  m = re.fullmatch(r"(encoder|decoder)/layers_(\d+)/mlp/(wi_0|wi_1|wo)/kernel", path)
  if m:
    sub = 1 if m[1] == "encoder" else 2
    return f"{m[1]}.block.{m[2]}.layer.{sub}.DenseReluDense.{m[3]}.weight", True
  m = re.fullmatch(r"decoder/layers_(\d+)/(\w+)/scale", path)
  if m and m[2] in _DEC_NORM_LAYER:
    return f"decoder.block.{m[1]}.layer.{_DEC_NORM_LAYER[m[2]]}.layer_norm.weight", False
  m = re.fullmatch(r"decoder/layers_(\d+)/(self_attention|encoder_decoder_attention)/"
                   r"(query|key|value|out)/kernel", path)
  if m:
    sub, name = _DEC_ATTN[m[2]]
    return f"decoder.block.{m[1]}.layer.{sub}.{name}.{_ATTN[m[3]]}.weight", True
  raise MappingError(f"T5X parameter {path!r} has no Hugging Face MT5 counterpart.")


def to_t5x_name(key: str) -> tuple[str, bool]:
  """HF key -> (T5X path, whether the array is transposed)."""
  if key == "shared.weight":
    return "token_embedder/embedding", False
  if key == "lm_head.weight":
    return "decoder/logits_dense/kernel", True
  m = re.fullmatch(r"(encoder|decoder)\.block\.(\d+)\.layer\.0\.SelfAttention\."
                   r"relative_attention_bias\.weight", key)
  if m:
    if m[2] != "0":
      raise MappingError(f"{key}: only block 0 may hold relative_attention_bias in MT5.")
    return f"{m[1]}/relpos_bias/rel_embedding", True
  m = re.fullmatch(r"(encoder|decoder)\.final_layer_norm\.weight", key)
  if m:
    return f"{m[1]}/{m[1]}_norm/scale", False
  m = re.fullmatch(r"encoder\.block\.(\d+)\.layer\.([01])\.layer_norm\.weight", key)
  if m:
    name = {v: k for k, v in _ENC_ATTN_LAYER.items()}[int(m[2])]
    return f"encoder/layers_{m[1]}/{name}/scale", False
  m = re.fullmatch(r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight", key)
  if m:
    return f"encoder/layers_{m[1]}/attention/{_ATTN_INV[m[2]]}/kernel", True
  m = re.fullmatch(r"(encoder|decoder)\.block\.(\d+)\.layer\.([12])\.DenseReluDense\."
                   r"(wi_0|wi_1|wo)\.weight", key)
  if m and int(m[3]) == (1 if m[1] == "encoder" else 2):
    return f"{m[1]}/layers_{m[2]}/mlp/{m[4]}/kernel", True
  m = re.fullmatch(r"decoder\.block\.(\d+)\.layer\.([012])\.layer_norm\.weight", key)
  if m:
    name = {v: k for k, v in _DEC_NORM_LAYER.items()}[int(m[2])]
    return f"decoder/layers_{m[1]}/{name}/scale", False
  m = re.fullmatch(r"decoder\.block\.(\d+)\.layer\.([01])\.(SelfAttention|EncDecAttention)\."
                   r"([qkvo])\.weight", key)
  if m and _DEC_ATTN["self_attention" if m[3] == "SelfAttention" else
                     "encoder_decoder_attention"][0] == int(m[2]):
    name = "self_attention" if m[3] == "SelfAttention" else "encoder_decoder_attention"
    return f"decoder/layers_{m[1]}/{name}/{_ATTN_INV[m[4]]}/kernel", True
  raise MappingError(
      f"Hugging Face key {key!r} is not part of a gated-GELU MT5ForConditionalGeneration "
      "(is this another architecture, e.g. T5 v1.0 with DenseReluDense.wi, or BART?).")


def iter_t5x_to_hf(flat_params: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]
                   ) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF key, array) for each T5X (path, array); lazily, one at a time."""
  items = flat_params.items() if isinstance(flat_params, Mapping) else flat_params
  for path, value in items:
    key, transpose = to_hf_name(path)
    value = np.asarray(value)
    yield key, np.ascontiguousarray(value.T) if transpose else value


def iter_hf_to_t5x(state: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]
                   ) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (T5X path, array) for each HF (key, array), skipping embedding aliases."""
  items = state.items() if isinstance(state, Mapping) else state
  for key, value in items:
    if key in HF_EMBEDDING_ALIASES:
      continue
    path, transpose = to_t5x_name(key)
    value = np.asarray(value)
    yield path, np.ascontiguousarray(value.T) if transpose else value


def t5x_to_hf(flat_params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return dict(iter_t5x_to_hf(flat_params))


def hf_to_t5x(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return dict(iter_hf_to_t5x(state))


def hf_config_dict(config: T5Config, dropout_rate: float = 0.1) -> dict:
  """The ``config.json`` of an HF MT5 checkpoint with this architecture (untied head)."""
  return {
      "architectures": ["MT5ForConditionalGeneration"],
      "model_type": "mt5",
      "d_model": config.emb_dim,
      "d_kv": config.head_dim,
      "d_ff": config.mlp_dim,
      "num_heads": config.num_heads,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "vocab_size": config.vocab_size,
      "feed_forward_proj": "gated-gelu",
      "dense_act_fn": "gelu_new",
      "is_gated_act": True,
      "tie_word_embeddings": False,
      "relative_attention_num_buckets": config.relpos_num_buckets,
      "relative_attention_max_distance": config.relpos_max_distance,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "dropout_rate": dropout_rate,
      "initializer_factor": 1.0,
      "is_encoder_decoder": True,
      "use_cache": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "tokenizer_class": "T5Tokenizer",
      "torch_dtype": "float32",
  }
