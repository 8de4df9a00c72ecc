"""Builds HF transformers' torch MT5 on the same weights as ours (test helper)."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.numpy import save_file

from xmtf_pipeline import params
from xmtf_pipeline.interop import hf_mapping


def save_hf_checkpoint(flat_params, config, out_dir: str) -> None:
  """Writes config.json + model.safetensors with an explicit, untied lm_head."""
  os.makedirs(out_dir, exist_ok=True)
  state = {k: np.asarray(v, np.float32) for k, v in hf_mapping.iter_t5x_to_hf(flat_params)}
  save_file(state, os.path.join(out_dir, "model.safetensors"))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_mapping.hf_config_dict(config, dropout_rate=0.0), f)


def load_hf_model(params_tree, config, tmp_dir: str):
  """transformers 5.x ties MT5's head when built from a config, so the untied
  reference is loaded from a checkpoint that stores lm_head.weight itself."""
  from transformers import MT5ForConditionalGeneration

  save_hf_checkpoint(params.flatten(params_tree), config, tmp_dir)
  model = MT5ForConditionalGeneration.from_pretrained(tmp_dir, dtype=torch.float32)
  return model.eval()
