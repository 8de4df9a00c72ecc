"""The smallest model a test of the training loop needs: mt5_tiny with one encoder layer and one
decoder layer.

Tracing, lowering and compiling grow with the unrolled layers: a 5-step `train()` of mt5_tiny
took 5.4 CPU-s with two layers each and 3.3 with one (warm compile cache, 2 cores). Tests whose
claim does not depend on depth (restarts, signals, sharding, several processes) use this model;
the tests of depth itself (scanned layers, per-layer checkpoints, HF parity) keep theirs.
"""

from xmtf_pipeline import gin_config
from xmtf_pipeline.network import T5Config

# Appended after `--gin_file=models/mt5_tiny.gin`, as a user would override it.
GIN_FLAGS = ("--gin.network.T5Config.num_encoder_layers=1",
             "--gin.network.T5Config.num_decoder_layers=1")


def config() -> T5Config:
  """The T5Config those flags give (to build restore targets)."""
  return gin_config.load_model_config("mt5_tiny", [f.removeprefix("--gin.").replace("=", " = ")
                                                   for f in GIN_FLAGS])
