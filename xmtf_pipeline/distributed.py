"""Multi-process runs on JAX's own runtime (``jax.distributed``).

TPU pods and SLURM clusters are detected by JAX itself; GPU/CPU hosts elsewhere
pass T5X's flags (``--coordinator_address``, ``--process_count``,
``--process_index``). A coordinator that cannot be reached fails after a
timeout with the address in the message, instead of hanging.
"""

from __future__ import annotations

import os
import socket
import time

import jax


class DistributedError(RuntimeError):
  """jax.distributed could not start; the message names the address and the fix."""


def initialize(coordinator_address: str | None = None, process_count: int | None = None,
               process_index: int | None = None, timeout_s: int = 300) -> None:
  explicit = coordinator_address is not None
  if not explicit and "SLURM_JOB_ID" not in os.environ and "TPU_NAME" not in os.environ:
    if process_count not in (None, 1):
      raise DistributedError("--process_count > 1 needs --coordinator_address=HOST:PORT (the "
                             "address of process 0), or a SLURM/TPU environment.")
  if explicit and (process_count is None or process_index is None):
    raise DistributedError("--coordinator_address needs --process_count and --process_index.")
  if explicit and process_index is not None and not 0 <= process_index < (process_count or 1):
    raise DistributedError(f"--process_index={process_index} must be in [0, {process_count}).")
  if explicit and process_index:
    # JAX's client aborts the whole process (a fatal log, no exception) when the
    # coordinator never answers, so probe it first and fail with a message.
    _wait_for_coordinator(coordinator_address, timeout_s, process_index, process_count)
  try:
    jax.distributed.initialize(coordinator_address, process_count, process_index,
                               initialization_timeout=timeout_s)
  except Exception as e:
    where = coordinator_address or "the auto-detected coordinator (SLURM/TPU)"
    raise DistributedError(
        f"Could not join the run at {where} within {timeout_s}s as process {process_index} of "
        f"{process_count}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
        "Check that process 0 is running, and that the host and port are reachable from here.") from e


def _wait_for_coordinator(address: str, timeout_s: int, index: int | None,
                          count: int | None) -> None:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise DistributedError(f"--coordinator_address={address!r} must be HOST:PORT.")
  deadline = time.time() + timeout_s
  last: Exception | None = None
  while time.time() < deadline:
    try:
      with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
        return
    except OSError as e:
      last = e
      time.sleep(0.5)
  raise DistributedError(
      f"Could not reach the coordinator at {address} within {timeout_s}s as process {index} of "
      f"{count} ({type(last).__name__}: {last}). Check that process 0 is running, and that the "
      "host and port are reachable from here.")


def process_zero_agrees(ok: bool) -> bool:
  """Process 0's ``ok``, on every process (a refusal by process 0 stops all of them, instead of
  the others waiting in the first collective until a timeout); ``ok`` itself on one process."""
  if jax.process_count() == 1:
    return ok
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
