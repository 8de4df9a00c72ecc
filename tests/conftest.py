"""Hermetic test environment: no hub, no GCS, quiet TF, small fake devices."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="xmtf_hf_home_"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

from xmtf_pipeline.network import T5Config  # noqa: E402


@pytest.fixture
def tiny_config() -> T5Config:
  return T5Config(vocab_size=96, emb_dim=32, num_heads=4, num_encoder_layers=2,
                  num_decoder_layers=3, head_dim=8, mlp_dim=48, dtype="float32")
