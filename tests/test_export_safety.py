"""``xmtf export-hf`` when things go wrong: a kill -9 mid-write or between the final renames
(the next export cleans up or restores, and says so), temporaries it cannot prove its own (kept),
a diverged checkpoint (refused, nothing written), an earlier export with files added (said)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from interop_testlib import (
    TINY,
    export_our_checkpoint,
    random_opt_state,
    random_params,
    save_our_checkpoint,
)

from xmtf_pipeline import checkpoints, cli
from xmtf_pipeline.interop import output_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(checkpoint dir, a plain earlier export of it) for tests to copy."""
  ckpt, _, export = export_our_checkpoint(tmp_path_factory.mktemp("safety"))
  return ckpt, export


def _tree(root):
  """{relative path: bytes} of every file under root (to prove a folder was left intact)."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _temporaries(parent):
  return sorted(p for p in os.listdir(parent) if ".tmp-" in p)


# A real export process that dies by SIGKILL at a chosen point: "mid-write" signals the test
# (which sends the SIGKILL) after the first tensor is in model.safetensors; "between-renames"
# and "after-renames" kill themselves inside finish_output_dir.
_KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys, time
    from xmtf_pipeline import cli
    from xmtf_pipeline.interop import output_dir, safetensors_io
    mode, ready = sys.argv[1], sys.argv[2]
    if mode == "mid-write":
      blocks = safetensors_io.iter_row_blocks
      def stall(*args, **kwargs):
        yield from blocks(*args, **kwargs)
        open(ready, "w").close()
        time.sleep(600)
      safetensors_io.iter_row_blocks = stall
    elif mode == "between-renames":
      rename = os.rename
      def rename_then_die(src, dst):
        rename(src, dst)
        if dst.endswith(".old"):
          os.kill(os.getpid(), signal.SIGKILL)
      output_dir.os.rename = rename_then_die
    elif mode == "after-renames":
      output_dir._remove_old = lambda old: os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(cli.main(sys.argv[3:]))
    """)


def _killed_export(mode, ckpt, out, tmp_path, *flags):
  ready = tmp_path / "ready"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  proc = subprocess.Popen([sys.executable, "-c", _KILLED_EXPORT, mode, str(ready), "export-hf",
                           "--checkpoint_dir", ckpt, "--output_dir", str(out), *flags],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  try:
    if mode == "mid-write":
      deadline = time.monotonic() + 300
      while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
      assert ready.exists(), proc.communicate(timeout=60)
      proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)  # reaps it: its pid is gone, as after a real kill
  finally:
    proc.kill()
  assert proc.returncode == -signal.SIGKILL, err[-2000:]


def test_kill_9_mid_write_then_next_export_removes_its_temporary(run, tmp_path, capsys):
  ckpt, _ = run
  out = tmp_path / "hf"
  _killed_export("mid-write", ckpt, out, tmp_path)
  [name] = _temporaries(tmp_path)
  stale = tmp_path / name
  assert (stale / "model.safetensors").stat().st_size > 0 and not out.exists()
  marker = json.loads((stale / output_dir.TEMP_MARKER).read_text())
  assert marker["host"] == socket.gethostname() and marker["what"] == "export"
  capsys.readouterr()
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out)]) == 0
  said = [line for line in capsys.readouterr().out.splitlines() if str(stale) in line]
  assert len(said) == 1 and said[0].startswith(f"note: removed {stale} (") and \
      f"pid {marker['pid']}" in said[0], said
  assert _temporaries(tmp_path) == [] and (out / "model.safetensors").is_file()


def test_kill_9_between_the_renames_restores_the_earlier_export(run, tmp_path, capsys):
  """Killed after OUT -> <tmp>.old and before <tmp> -> OUT: the earlier export exists only as
  .old. The next export puts it back (never deletes it); it then needs --overwrite as before."""
  ckpt, export = run
  out = tmp_path / "hf"
  shutil.copytree(export, out)
  before = _tree(out)
  _killed_export("between-renames", ckpt, out, tmp_path, "--overwrite")
  assert not out.exists() and len(_temporaries(tmp_path)) == 2  # <tmp> and <tmp>.old
  capsys.readouterr()
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out)]) == 2
  captured = capsys.readouterr()
  assert f"note: restored {out} from " in captured.out and "note: removed " in captured.out
  assert "holds an earlier export; pass --overwrite" in captured.err
  assert _tree(out) == before and _temporaries(tmp_path) == []


def test_kill_9_after_the_renames_finishes_deleting_the_replaced_export(run, tmp_path, capsys):
  ckpt, export = run
  out = tmp_path / "hf"
  shutil.copytree(export, out)
  (out / "README.md").write_text(f"{(out / 'README.md').read_text()}\nthe earlier one\n")
  _killed_export("after-renames", ckpt, out, tmp_path, "--overwrite")
  [old] = _temporaries(tmp_path)
  assert old.endswith(".old") and "the earlier one" in (tmp_path / old / "README.md").read_text()
  assert "the earlier one" not in (out / "README.md").read_text()  # the replacement is in place
  capsys.readouterr()
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out),
                   "--overwrite"]) == 0
  assert f"note: removed {tmp_path / old} (" in capsys.readouterr().out
  assert _temporaries(tmp_path) == []


def _fake_temporary(parent, out_name, hexid, marker=None):
  path = parent / f".{out_name}.tmp-{hexid}"
  path.mkdir()
  (path / "model.safetensors").write_bytes(b"\0" * 1000)
  if marker is not None:
    (path / output_dir.TEMP_MARKER).write_text(json.dumps(
        {"kind": "xmtf output temporary", "what": "export", "host": socket.gethostname(),
         "pid": os.getpid(), "start_time": output_dir._proc_stat(os.getpid())[1],
         "boot_id": output_dir._boot_id(), **marker}))
  return path


def test_temporaries_not_provably_stale_are_kept_and_named(run, tmp_path, capsys):
  """No marker (not ours), a live owner, another host's: kept and named. A pid reused by another
  process (its start time differs) is provably stale: removed."""
  ckpt, _ = run
  alive = subprocess.Popen(["sleep", "300"])
  try:
    kept = [_fake_temporary(tmp_path, "hf", "0000000a"),
            _fake_temporary(tmp_path, "hf", "0000000b", {
                "pid": alive.pid, "start_time": output_dir._proc_stat(alive.pid)[1]}),
            _fake_temporary(tmp_path, "hf", "0000000c", {"host": "elsewhere", "pid": 1})]
    reused = _fake_temporary(tmp_path, "hf", "0000000d", {"pid": alive.pid, "start_time": "1"})
    capsys.readouterr()
    assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir",
                     str(tmp_path / "hf")]) == 0
    said = capsys.readouterr().out
  finally:
    alive.kill()
    alive.wait()
  for path in kept:
    assert (path / "model.safetensors").is_file() and f"note: kept {path} (" in said
  assert f"note: kept {kept[0]} (1000 bytes): named like an xmtf temporary" in said
  assert f"without its {output_dir.TEMP_MARKER}" in said and "is still running" in said
  assert "runs on another host" in said
  assert not reused.exists() and f"note: removed {reused} (" in said


def test_diverged_checkpoint_is_refused_naming_the_array_and_the_last_finite_one(run, tmp_path,
                                                                                 capsys):
  """NaN in one parameter of checkpoint_9 (checkpoint_4 is finite): exit 2, one line naming the
  array and checkpoint_4; the existing export in OUT is untouched, no temporary is left."""
  _, export = run
  model_dir = tmp_path / "run"
  save_our_checkpoint(str(model_dir), step=4)
  params = random_params(TINY, seed=3)
  wo = params["decoder"]["layers_1"]["mlp"]["wo"]
  wo["kernel"] = np.array(wo["kernel"])  # a writable copy
  wo["kernel"][2, 5] = np.nan
  saver = checkpoints.Checkpointer(str(model_dir))
  saver.save(9, {"target": params, "state": random_opt_state(params, 9)},
             {"batches": 3, "random_seed": 0, "data_seed": 0})
  saver.close()
  out = tmp_path / "hf"
  shutil.copytree(export, out)
  before = _tree(out)
  capsys.readouterr()
  for dtype in ("float32", "bfloat16"):
    assert cli.main(["export-hf", "--checkpoint_dir", str(model_dir / "checkpoint_9"),
                     "--output_dir", str(out), "--overwrite", "--dtype", dtype]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("xmtf export-hf: error: Checkpoint ") and "NaN/Inf" in err
    assert "target/decoder/layers_1/mlp/wo/kernel" in err, err
    assert f"use the last finite checkpoint {model_dir / 'checkpoint_4'}" in err, err
    assert _tree(out) == before and _temporaries(tmp_path) == []


def test_earlier_export_with_files_added_is_named_as_such(run, tmp_path, capsys):
  ckpt, export = run
  out = tmp_path / "hf"
  shutil.copytree(export, out)
  (out / "my_eval.txt").write_text("results")
  (out / "plots").mkdir()
  before = _tree(out)
  for flags in ([], ["--overwrite"]):
    assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out),
                     *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{out} holds an earlier export with other files added (my_eval.txt, plots/)" in err
    assert "not an earlier export" not in err
    assert "--overwrite replaces only a plain earlier export" in err
    assert "nothing was changed: move those files away or choose another directory" in err
    assert _tree(out) == before and _temporaries(tmp_path) == []
