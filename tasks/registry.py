"""Idempotent registration into seqio's global registries.

Re-importing or reloading a module of this package (gin files import them; tests reload them)
replaces our own earlier registration of the same name. A name registered by someone else is
never overwritten: that raises, naming the clash.
"""

from __future__ import annotations

from collections.abc import Sequence

import seqio

_OWNER = "_xmtf_owned"


def _claim(registry, name: str) -> None:
  if name in registry.names():
    if not getattr(registry.get(name), _OWNER, False):
      raise ValueError(
          f"{registry.__name__} already holds {name!r}, registered outside this package; "
          "rename one of them.")
    registry.remove(name)


def add_task(name: str, *, datasets: Sequence[str] = (), **kwargs) -> seqio.Task:
  """Registers (or re-registers) a Task; ``datasets`` records which source datasets it reads."""
  _claim(seqio.TaskRegistry, name)
  task = seqio.TaskRegistry.add(name, **kwargs)
  setattr(task, _OWNER, True)
  task._xmtf_datasets = tuple(datasets)  # read by the held-out guard (tasks.mixtures).
  return task


def add_mixture(name: str, tasks, *, mixture_cls=seqio.Mixture, **kwargs) -> seqio.Mixture:
  """Registers (or re-registers) a Mixture."""
  _claim(seqio.MixtureRegistry, name)
  mixture = seqio.MixtureRegistry.add(name, tasks, mixture_cls=mixture_cls, **kwargs)
  setattr(mixture, _OWNER, True)
  return mixture


def owned(name: str) -> bool:
  for registry in (seqio.TaskRegistry, seqio.MixtureRegistry):
    if name in registry.names():
      return bool(getattr(registry.get(name), _OWNER, False))
  return False
