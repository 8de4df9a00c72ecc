"""Output folders that conversions (``xmtf export-hf``, ``xmtf import-hf``) write atomically.

A conversion writes into a hidden sibling of OUT and renames it into place at the end, so a
failed one never leaves a half-written OUT; ``--overwrite`` replaces only an earlier output of the
same command, and what a killed conversion left behind is cleaned up or restored by the next.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any


def _listing(path: str, limit: int = 12) -> str:
  names = sorted(os.listdir(path))
  shown = [n + ("/" if os.path.isdir(os.path.join(path, n)) else "") for n in names[:limit]]
  return ", ".join(shown) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


# --------------------------------------------------------------------------- output temporaries
#
# A conversion writes into a hidden sibling ``.<OUT>.tmp-<hex8>`` and renames it at the end. A
# kill -9 skips every cleanup, so the temporary records who made it in TEMP_MARKER (host, pid,
# the pid's start time and the boot id, to tell a dead owner from a recycled pid), and the next
# conversion to the same OUT removes the temporaries whose owner it can prove dead. Anything it
# cannot prove (no marker, a live pid, another host on a shared filesystem) is kept and named.
#
# finish_output_dir swaps with two renames, OUT -> ``<tmp>.old`` then tmp -> OUT, moving the
# marker into ``<tmp>.old`` between them. A kill between the renames leaves the earlier OUT only
# as ``<tmp>.old``: the next run puts it back where it was (never deletes it), so the folder is
# as before the interrupted run. After both renames, ``<tmp>.old`` is the earlier output the
# user asked --overwrite to replace (the replacement is in place): the next run finishes that
# deletion, saying so.

TEMP_MARKER = ".xmtf-temporary.json"
_MARKER_KIND = "xmtf output temporary"


def _temp_pattern(output_dir: str) -> re.Pattern:
  return re.compile(rf"\.{re.escape(os.path.basename(output_dir))}\.tmp-([0-9a-f]{{8}})(\.old)?")


def _boot_id() -> str | None:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
  """(state, start time in clock ticks since boot) of a Linux process; None elsewhere/gone."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], fields[19]
  except (OSError, IndexError):
    return None


def _write_marker(tmp: str, output_dir: str, what: str) -> None:
  stat = _proc_stat(os.getpid())
  with open(os.path.join(tmp, TEMP_MARKER), "w") as f:
    json.dump({"kind": _MARKER_KIND, "what": what, "output_dir": output_dir,
               "host": socket.gethostname(), "pid": os.getpid(),
               "start_time": stat[1] if stat else None, "boot_id": _boot_id(),
               "created": time.strftime("%Y-%m-%d %H:%M:%S %z")}, f)


def _read_marker(path: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(path, TEMP_MARKER)) as f:
      marker = json.load(f)
    if marker.get("kind") == _MARKER_KIND and isinstance(marker.get("pid"), int):
      return marker
  except (OSError, ValueError, AttributeError):
    pass
  return None


def _owner_state(marker: dict[str, Any]) -> str:
  """'dead' (provably: same host and its process is gone), 'alive', or 'other-host'."""
  if marker.get("host") != socket.gethostname():
    return "other-host"  # a shared filesystem: its pid says nothing here
  boot = _boot_id()
  if marker.get("boot_id") and boot and marker["boot_id"] != boot:
    return "dead"  # the machine rebooted since
  pid = marker["pid"]
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return "dead"
  except OSError:  # EPERM: someone else's live process
    pass
  stat = _proc_stat(pid)
  if stat is not None and (stat[0] in ("Z", "X") or (marker.get("start_time") is not None
                                                      and stat[1] != marker["start_time"])):
    return "dead"  # a killed process not yet reaped, or the pid reused by another process
  return "alive"


def _size(path: str) -> str:
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.lstat(os.path.join(root, name)).st_size
      except OSError:
        pass
  return f"{total / 1e6:.1f} MB" if total >= 100_000 else f"{total} bytes"


def _remove_old(old: str) -> None:
  """Deletes ``old`` with its marker last, so a kill mid-way still leaves it recognisable."""
  for name in os.listdir(old):
    if name != TEMP_MARKER:
      entry = os.path.join(old, name)
      if os.path.isdir(entry) and not os.path.islink(entry):
        shutil.rmtree(entry)
      else:
        os.unlink(entry)
  try:
    os.unlink(os.path.join(old, TEMP_MARKER))
  except FileNotFoundError:
    pass
  os.rmdir(old)


def clean_stale_temporaries(output_dir: str) -> list[str]:
  """Removes the temporaries of interrupted conversions to ``output_dir`` whose owner is provably
  dead, restores an earlier output that such a run had moved aside, and names (keeps) the rest.

  Returns the lines it printed (one per temporary). See the comment above TEMP_MARKER.
  """
  output_dir = os.path.abspath(output_dir)
  parent = os.path.dirname(output_dir)
  try:
    names = os.listdir(parent)
  except OSError:
    return []
  pattern = _temp_pattern(output_dir)
  groups: dict[str, dict[str, str]] = {}
  for name in sorted(names):
    m = pattern.fullmatch(name)
    if m and os.path.isdir(os.path.join(parent, name)) and \
        not os.path.islink(os.path.join(parent, name)):
      groups.setdefault(m[1], {})["old" if m[2] else "tmp"] = os.path.join(parent, name)
  lines: list[str] = []

  def say(line: str) -> None:  # as it goes: a failure half-way still reports what was done
    print(line)
    lines.append(line)

  for group in groups.values():
    tmp, old = group.get("tmp"), group.get("old")
    marker = (tmp and _read_marker(tmp)) or (old and _read_marker(old))
    if marker is None:
      for p in (tmp, old):
        if p:
          say(f"note: kept {p} ({_size(p)}): named like an xmtf temporary of {output_dir} but "
              f"without its {TEMP_MARKER}, so not provably ours; delete it if it is not needed.")
      continue
    owner = f"xmtf {marker.get('what', 'conversion')} (pid {marker['pid']} on {marker['host']})"
    state = _owner_state(marker)
    if state != "dead":
      why = ("is still running" if state == "alive" else
             "runs on another host, so whether it still runs cannot be told from here")
      for p in (tmp, old):
        if p:
          say(f"note: kept {p} ({_size(p)}): its {owner} {why}; delete it once that process "
              "has stopped.")
      continue
    if old:
      if not os.path.lexists(output_dir):  # killed between the renames: put the earlier back
        if os.path.lexists(os.path.join(old, TEMP_MARKER)):
          os.unlink(os.path.join(old, TEMP_MARKER))
        os.rename(old, output_dir)
        say(f"note: restored {output_dir} from {old}: an interrupted {owner} had moved the "
            "earlier output aside to replace it.")
      elif tmp is None:  # both renames done: the earlier output it had been told to replace
        size = _size(old)
        _remove_old(old)
        say(f"note: removed {old} ({size}): the earlier output that an interrupted {owner} "
            "had replaced with --overwrite.")
      else:
        say(f"note: kept {old} ({_size(old)}): an earlier output moved aside by an "
            f"interrupted {owner}, but {output_dir} exists again; move it back or delete it "
            "yourself.")
    if tmp:
      size = _size(tmp)
      shutil.rmtree(tmp)
      say(f"note: removed {tmp} ({size}): the unfinished output of an interrupted {owner}.")
  return lines


def discard_output_dir(tmp: str) -> None:
  """Removes a temporary from ``prepare_output_dir`` (a failed or refused conversion)."""
  shutil.rmtree(tmp, ignore_errors=True)


def prepare_output_dir(output_dir: str, overwrite: bool, protect: str | None = None,
                       is_ours: Callable[[str], bool] | None = None,
                       what: str = "output",
                       added_files: Callable[[str], list[str] | None] | None = None) -> str:
  """A fresh temporary sibling of ``output_dir``; refuses a non-empty one unless it is ours.

  ``--overwrite`` replaces only a folder ``is_ours`` recognises (an earlier
  ``what``, e.g. "export"): any other non-empty folder is refused even with
  it, listing what is there, so another run's checkpoints are never deleted.
  ``added_files`` names the files that keep a folder from being ours when it
  is otherwise an earlier ``what`` (None when it is not one), so that refusal
  can say so. Writing to a sibling and renaming at the end (``finish_output_dir``)
  means a failed conversion never leaves a half-written directory behind; the
  temporaries of killed ones are cleaned first (``clean_stale_temporaries``).
  The folder gets the permissions of the umask, like any ``mkdir``.
  """
  output_dir = os.path.abspath(output_dir)
  if protect is not None:
    src = os.path.abspath(protect)
    if os.path.commonpath([src, output_dir]) == output_dir:
      raise FileExistsError(f"Output directory {output_dir} contains the input {src}; "
                            "choose another output directory.")
  clean_stale_temporaries(output_dir)  # first: it may put an earlier output back in place
  if os.path.exists(output_dir):
    if not os.path.isdir(output_dir):
      raise FileExistsError(f"{output_dir} exists and is not a directory.")
    if os.listdir(output_dir):
      ours = is_ours is not None and is_ours(output_dir)
      if not ours:
        _refuse_foreign(output_dir, what, added_files)
      if not overwrite:
        raise FileExistsError(f"Output directory {output_dir} exists and is not empty: it holds "
                              f"an earlier {what}; pass --overwrite to replace it, or choose a "
                              "new directory.")
  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  while True:  # mkdir (not tempfile.mkdtemp, which makes it 0700) so the umask applies
    tmp = os.path.join(parent, f".{os.path.basename(output_dir)}.tmp-{uuid.uuid4().hex[:8]}")
    if os.path.lexists(f"{tmp}.old"):
      continue
    try:
      os.mkdir(tmp)
    except FileExistsError:
      continue
    try:
      _write_marker(tmp, output_dir, what)
    except BaseException:
      discard_output_dir(tmp)
      raise
    return tmp


def _refuse_foreign(output_dir: str, what: str,
                    added_files: Callable[[str], list[str] | None] | None,
                    during: bool = False) -> None:
  """Raises the one-line refusal for a non-empty ``output_dir`` that is not an earlier ``what``;
  ``during``: found so when the conversion finished (it was ours when it started)."""
  added = added_files(output_dir) if added_files is not None else None
  if added:
    shown = ", ".join(added[:12]) + (f", ... ({len(added)} files)" if len(added) > 12 else "")
    raise FileExistsError(
        f"Output directory {output_dir} holds an earlier {what} with other files added"
        + (" during the conversion" if during else "") + f" ({shown}); --overwrite replaces "
        f"only a plain earlier {what}, since it would delete those files too, so nothing was "
        "changed: move those files away or choose another directory.")
  if during:
    raise FileExistsError(
        f"Output directory {output_dir} changed during the conversion and is no longer an "
        f"earlier {what} (it has: {_listing(output_dir)}); nothing was replaced.")
  raise FileExistsError(
      f"Output directory {output_dir} exists and is not empty, and is not an earlier "
      f"{what} (it has: {_listing(output_dir)}); nothing was changed: choose a new or "
      "empty directory (--overwrite replaces only an earlier " + what + ").")


def finish_output_dir(tmp: str, output_dir: str, is_ours: Callable[[str], bool] | None = None,
                      what: str = "output",
                      added_files: Callable[[str], list[str] | None] | None = None) -> None:
  """Moves ``tmp`` to ``output_dir``, replacing an empty folder or an earlier ``what``.

  Checked again here: the folder may have changed while the conversion ran.
  The marker moves into ``<tmp>.old`` between the two renames, so a kill at
  any point leaves something the next run can put back or finish (see TEMP_MARKER).
  """
  output_dir = os.path.abspath(output_dir)
  marker = os.path.join(tmp, TEMP_MARKER)
  if os.path.exists(output_dir):
    if os.listdir(output_dir) and not (is_ours is not None and is_ours(output_dir)):
      discard_output_dir(tmp)
      _refuse_foreign(output_dir, what, added_files, during=True)
    old = f"{tmp}.old"
    os.rename(output_dir, old)
    os.rename(marker, os.path.join(old, TEMP_MARKER))
    os.rename(tmp, output_dir)
    _remove_old(old)
  else:
    os.unlink(marker)
    os.rename(tmp, output_dir)
