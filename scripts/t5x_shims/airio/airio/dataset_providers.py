"""Placeholders for the ``airio.dataset_providers`` names T5X reads (see ``airio/__init__.py``)."""


class DatasetProviderBase:
  """Base of AirIO tasks and mixtures; nothing derives from it under the shim."""

  def __init__(self, *args, **kwargs):
    raise NotImplementedError(
        "airio shim (scripts/t5x_shims): AirIO tasks are not available; use SeqIO tasks or "
        "install the real airio (pip install git+https://github.com/google/airio)")


class Task(DatasetProviderBase):
  pass


class Mixture(DatasetProviderBase):
  pass


class AirIODatasetIterator:
  """AirIO's dataset iterator; no iterator is one under the shim."""

  def __init__(self, *args, **kwargs):
    raise NotImplementedError("airio shim (scripts/t5x_shims): no AirIO iterators")


def get_vocabularies(provider):
  raise NotImplementedError("airio shim (scripts/t5x_shims): no AirIO vocabularies")
