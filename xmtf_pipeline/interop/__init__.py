"""Interchange with other formats: Hugging Face and T5X checkpoints, safetensors, the parameter mapping, and the restore of any checkpoint format."""
