"""Model gin files: exact parameter counts, name mapping, and bad input."""

import numpy as np
import pytest

from xmtf_pipeline import gin_config, params
from xmtf_pipeline.interop import hf_mapping
from xmtf_pipeline.network import T5Config

EXPECTED = {
    "mt5_small": 300_176_768,
    "mt5_base": 582_401_280,
    "mt5_large": 1_229_581_312,
    "mt5_xl": 3_742_619_648,
    "mt5_xxl": 12_921_057_280,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_parameter_counts(name):
  config = gin_config.load_model_config(name)
  assert params.count(config) == EXPECTED[name]
  # Leaves = 23 L + 6 (reference doc §1.1).
  assert len(params.param_shapes(config)) == 23 * config.num_encoder_layers + 6
  assert config.vocab_size == 250112 and config.dtype == "bfloat16"


def test_count_matches_closed_form():
  for name in EXPECTED:
    c = gin_config.load_model_config(name)
    d, i, f, V = c.emb_dim, c.num_heads * c.head_dim, c.mlp_dim, c.vocab_size
    closed = (2 * V * d + c.num_encoder_layers * (4 * d * i + 3 * d * f + 2 * d)
              + c.num_decoder_layers * (8 * d * i + 3 * d * f + 3 * d) + 2 * c.num_heads * 32 + 2 * d)
    assert params.count(c) == closed


def test_every_parameter_has_logical_axes_from_the_axes_module():
  from xmtf_pipeline import axes
  names = params.logical_axes(gin_config.load_model_config("mt5_tiny"))
  for path, logical in names.items():
    assert logical and all(a in axes.LOGICAL_AXES for a in logical), path
  assert names["token_embedder/embedding"] == ("vocab", "embed")
  assert names["decoder/logits_dense/kernel"] == ("embed", "vocab")
  assert names["encoder/relpos_bias/rel_embedding"] == ("heads", "relpos_buckets")
  assert names["encoder/layers_0/attention/out/kernel"] == ("joined_kv", "embed")


def test_bindings_override_model_file():
  config = gin_config.load_model_config("mt5_tiny", ["COMPUTE_DTYPE = 'bfloat16'",
                                                     "network.T5Config.num_heads = 2"])
  assert config.dtype == "bfloat16" and config.num_heads == 2
  assert type(config) is T5Config


def test_unknown_model_name_lists_choices():
  with pytest.raises(gin_config.GinConfigError, match=r"Unknown model 'mt5_larg'.*mt5_large"):
    gin_config.load_model_config("mt5_larg")


def test_the_shared_base_is_no_model():
  """models/mt5_common.gin holds what the sizes share, not dimensions: not offered as a model."""
  assert "mt5_common" not in gin_config.model_names()
  assert set(EXPECTED) | {"mt5_tiny"} == set(gin_config.model_names())
  with pytest.raises(gin_config.GinConfigError, match=r"Unknown model 'mt5_common'"):
    gin_config.model_gin_file("mt5_common")


def test_malformed_gin_file_names_file(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("from __gin__ import dynamic_registration\n"
                 "from xmtf_pipeline import network\n"
                 "network.T5Config.emb_dimm = 3\n")
  with pytest.raises(gin_config.GinConfigError, match=r"bad\.gin.*emb_dimm"):
    gin_config.load_model_config(str(bad))
  bad.write_text("network.T5Config.emb_dim = = 3\n")
  with pytest.raises(gin_config.GinConfigError, match=r"bad\.gin"):
    gin_config.load_model_config(str(bad))


def test_typo_in_binding_is_named():
  with pytest.raises(gin_config.GinConfigError, match="num_hedas"):
    gin_config.load_model_config("mt5_tiny", ["network.T5Config.num_hedas = 2"])


def test_gin_shorthand_rewrite():
  assert gin_config.rewrite_gin_args(["--gin.MODEL_DIR=\"/x\"", "--other"]) == [
      "--gin_bindings=MODEL_DIR = \"/x\"", "--other"]
  with pytest.raises(gin_config.GinConfigError, match="needs '='"):
    gin_config.rewrite_gin_args(["--gin.MODEL_DIR"])


def test_mismatched_tree_names_first_path_and_shapes():
  small = gin_config.load_model_config("mt5_tiny")
  bigger = small.replace(emb_dim=small.emb_dim * 2)
  abstract = {p: np.zeros(s, np.float32) for p, s in params.param_shapes(bigger).items()}
  with pytest.raises(params.ParamMismatchError,
                     match=r"decoder/decoder_norm/scale has shape \(128,\).*expects \(64,\)"):
    params.check_params(params.unflatten(abstract), small)
  deeper = small.replace(num_encoder_layers=3)
  abstract = {p: np.zeros(s, np.float32) for p, s in params.param_shapes(deeper).items()}
  with pytest.raises(params.ParamMismatchError, match="unexpected parameter encoder/layers_2"):
    params.check_params(params.unflatten(abstract), small)


def test_name_mapping_is_a_bijection_with_transposes():
  config = gin_config.load_model_config("mt5_small")
  shapes = params.param_shapes(config)
  seen = set()
  for path, shape in shapes.items():
    key, transposed = hf_mapping.to_hf_name(path)
    assert key not in seen
    seen.add(key)
    assert hf_mapping.to_t5x_name(key) == (path, transposed)
    assert transposed == (len(shape) == 2 and path != "token_embedder/embedding")
  assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in seen
  assert not any("block.1.layer.0.SelfAttention.relative_attention_bias" in k for k in seen)
  with pytest.raises(hf_mapping.MappingError, match="only block 0"):
    hf_mapping.to_t5x_name("encoder.block.3.layer.0.SelfAttention.relative_attention_bias.weight")
  with pytest.raises(hf_mapping.MappingError, match="another architecture"):
    hf_mapping.to_t5x_name("encoder.block.0.layer.1.DenseReluDense.wi.weight")


def test_array_round_trip_is_bitwise():
  config = gin_config.load_model_config("mt5_tiny")
  rng = np.random.default_rng(0)
  flat = {p: rng.standard_normal(s).astype(np.float32) for p, s in params.param_shapes(config).items()}
  back = hf_mapping.hf_to_t5x(hf_mapping.t5x_to_hf(flat))
  assert set(back) == set(flat)
  for p in flat:
    np.testing.assert_array_equal(back[p], flat[p])
