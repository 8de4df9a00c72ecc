"""``airio.core`` names that T5X (t5x/utils.py) reads: classes no object is an instance of."""

from airio import dataset_providers
from airio.dataset_providers import (
  AirIODatasetIterator,
  DatasetProviderBase,
  Mixture,
  Task,
)

__all__ = ["AirIODatasetIterator", "DatasetProviderBase", "Mixture", "Task", "dataset_providers"]
