"""Record parsing and validation, the standard T5X finetuning chain, and the sample's metric.

Parsing is plain Python (called from the sources through a stateless ``tf.numpy_function``), so a
bad record raises an error that names the file, the line and the field, and says how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import seqio
import tensorflow as tf

SKIP_HINT = ("or skip such lines with the gin binding "
             "`tasks.sources.skip_malformed_records.skip = True` (each skip is logged and counted)")


class RecordError(ValueError):
  """A malformed input record; the message names file:line and field."""


def _field(record: dict, key: str, where: str, allow_list: bool) -> str:
  if key not in record:
    raise RecordError(
        f"{where}: record has no {key!r} field (fields: {sorted(record)}). xP3 records are "
        f'{{"inputs": "...", "targets": "..."}}; fix the line {SKIP_HINT}.')
  value = record[key]
  if allow_list and isinstance(value, list):
    # Old xP3 dumps stored targets as a one-element list (bigscience update_jsonls.py).
    if len(value) != 1:
      raise RecordError(
          f"{where}: field {key!r} is a list of {len(value)} items; only the old one-element "
          f"form [\"...\"] is accepted. Fix the line {SKIP_HINT}.")
    value = value[0]
  if not isinstance(value, str):
    raise RecordError(
        f"{where}: field {key!r} is {type(value).__name__} ({str(value)[:40]!r}), expected a "
        f"string. Fix the line {SKIP_HINT}.")
  if not value.strip():
    raise RecordError(
        f"{where}: field {key!r} is empty. xP3 drops empty rows; fix or delete the line "
        f"{SKIP_HINT}.")
  return value


def validate_record(record, where: str, fields: Sequence[str] = ("inputs", "targets"),
                    list_fields: Sequence[str] = ("targets",)) -> tuple[str, ...]:
  """The string values of ``fields`` of a decoded record, or a RecordError naming the problem."""
  if not isinstance(record, dict):
    raise RecordError(
        f"{where}: expected a JSON object with fields {list(fields)}, got "
        f"{type(record).__name__}. Fix the line {SKIP_HINT}.")
  return tuple(_field(record, k, where, k in list_fields) for k in fields)


def parse_json_line(line: bytes | str, where: str, fields: Sequence[str] = ("inputs", "targets"),
                    list_fields: Sequence[str] = ("targets",)) -> tuple[str, ...]:
  """Decodes one JSON line and validates it (see ``validate_record``)."""
  try:
    record = json.loads(line)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    raise RecordError(
        f"{where}: malformed JSON ({e.msg if hasattr(e, 'msg') else e} at column "
        f"{getattr(e, 'colno', '?')}): {text[:80]!r}. Fix or delete the line {SKIP_HINT}."
    ) from None  # the message says it all; a chained JSON traceback only adds noise in TF errors
  return validate_record(record, where, fields, list_fields)


def check_vocabularies(dataset: tf.data.Dataset, output_features) -> tf.data.Dataset:
  """Loads each feature's vocabulary now, in Python, so a bad model path raises its own clear
  error here instead of an autograph StagingError from inside ``tokenize``."""
  for feature in output_features.values():
    _ = feature.vocabulary.vocab_size
  return dataset


def rekey_text_as_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """mT5's ``rekey(key_map={'inputs': None, 'targets': 'text'})``: empty inputs, text targets."""
  return dataset.map(lambda x: {"inputs": tf.constant(""), "targets": x["text"]},
                     num_parallel_calls=tf.data.AUTOTUNE)


def finetune_preprocessors() -> list:
  """seqio's standard chain, as T5X finetuning uses it (EOS added after trimming, both features)."""
  return [check_vocabularies, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim]


def strip_postprocessor(output, example=None, is_target=False):
  """Decoded text compared after stripping surrounding whitespace."""
  del example, is_target
  return output.strip() if isinstance(output, str) else output


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions equal to their target (the sample's tasks have one answer)."""
  if not targets:
    return {"exact_match": 0.0}
  hits = sum(str(t).strip() == str(p).strip() for t, p in zip(targets, predictions))
  return {"exact_match": 100.0 * hits / len(targets)}
