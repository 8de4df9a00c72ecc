"""One training job per MODEL_DIR: an OS file lock that dies with the process holding it.

Two trainers on one MODEL_DIR overwrite each other's checkpoints and mix their TensorBoard
events, and both exit 0. ``MODEL_DIR/.xmtf-train.lock`` is held with ``flock`` by process 0 of
the job for the whole run; the kernel drops it when that process exits in any way (kill -9
included), so a stale file never blocks a restart: only a live holder does. The file's text
names the holder (host, pid, start time) for the refusal message.

Every process of a multi-process job writes to MODEL_DIR, but only process 0 takes the lock and
tells the others whether it got it, so a second job stops on all its processes at once. Object
stores (``gs://``) have no locks; there the run is protected by nothing but its owner, and a
line says so.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys

LOCK_NAME = ".xmtf-train.lock"


class RunLockError(RuntimeError):
  """Another live job holds MODEL_DIR; the message names it."""


def _holder_text(fd: int) -> str:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 4096).decode() or "{}")
  except (OSError, ValueError):
    info = {}
  if not info:
    return "another process (it has not written its name yet)"
  return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started "
          f"{info.get('started', '?')}")


def holder(model_dir: str) -> str | None:
  """Who holds MODEL_DIR's lock now (host, pid, start), or None when nobody does."""
  path = os.path.join(model_dir, LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except OSError:
    return _holder_text(fd)
  else:
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


class RunLock:
  """``with RunLock(model_dir, is_chief):`` holds MODEL_DIR for this job or raises RunLockError.

  ``is_chief`` is True on the process that locks (process 0); ``agree`` (optional) makes every
  process of the job learn process 0's outcome: it takes process 0's bool and returns it on all.
  """

  def __init__(self, model_dir: str, is_chief: bool = True, agree=None):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_NAME)
    self._is_chief = is_chief
    self._agree = agree
    self._fd: int | None = None

  def __enter__(self) -> RunLock:
    error = None
    if self._is_chief and "://" in self.model_dir:
      print(f"note: MODEL_DIR {self.model_dir} is on an object store, which has no locks: "
            "nothing stops a second job from writing here, so run one job per MODEL_DIR.",
            flush=True)
    elif self._is_chief:
      error = self._acquire()
    got = error is None
    if self._agree is not None:
      got = bool(self._agree(got))
    if not got:
      self.release()
      raise RunLockError(error or f"MODEL_DIR {self.model_dir} is in use by another job "
                         "(process 0 names it); this process did nothing.")
    return self

  def _acquire(self) -> str | None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder_text(fd)
      os.close(fd)
      return (f"MODEL_DIR {self.model_dir} is in use by another xmtf train ({holder}; lock "
              f"{self.path}); nothing was changed: wait for it to finish or stop it, or use "
              "another MODEL_DIR.")
    except OSError as e:  # a filesystem without flock support
      os.close(fd)
      return (f"MODEL_DIR {self.model_dir}: cannot lock {self.path} ({e.strerror}); this "
              "filesystem does not support file locks, so use a local or NFS folder.")
    self._fd = fd
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(info) + "\n").encode())
    return None

  def release(self) -> None:
    if self._fd is not None:
      # The file stays: removing it would let a third job lock a new inode while a second one
      # still waits on the old. Its text is stale once unlocked, and that is harmless.
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __exit__(self, *exc) -> None:
    self.release()
