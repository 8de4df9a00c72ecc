"""Small synthetic seqio tasks with a byte vocabulary, for tests and smoke runs.

``synthetic_copy``: inputs ``copy: <letters>``, targets ``<letters>`` (2-6 letters
from an 8-letter alphabet). Deterministic: train and validation are fixed lists
generated from fixed seeds, so runs are exactly reproducible.
"""

from __future__ import annotations

import numpy as np
import seqio
import tensorflow as tf

ALPHABET = "abcdefgh"
VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(VOCABULARY, add_eos=True, required=True),
    "targets": seqio.Feature(VOCABULARY, add_eos=True),
}
SIZES = {"train": 4096, "validation": 256}


def copy_examples(split: str) -> tuple[list[str], list[str]]:
  rng = np.random.default_rng({"train": 0, "validation": 1}[split])
  inputs, targets = [], []
  for _ in range(SIZES[split]):
    word = "".join(rng.choice(list(ALPHABET), size=int(rng.integers(2, 7))))
    inputs.append(f"copy: {word}")
    targets.append(word)
  return inputs, targets


def _copy_dataset(split: str, shuffle_files: bool = False, seed: int | None = None):
  del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples
  inputs, targets = copy_examples(split)
  return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})


def register() -> None:
  """Idempotent: re-registering replaces the task."""
  seqio.TaskRegistry.remove("synthetic_copy")
  seqio.TaskRegistry.add(
      "synthetic_copy",
      source=seqio.FunctionDataSource(_copy_dataset, splits=tuple(SIZES),
                                      num_input_examples=dict(SIZES)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features=OUTPUT_FEATURES,
  )


register()
