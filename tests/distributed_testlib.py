"""Real jax.distributed jobs of several processes on this host, for tests."""

import socket
import subprocess


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_processes(command, count: int, env: dict, cwd, timeout: float = 600) -> list[str]:
  """``command(port, index, attempt)`` (an argv) as ``count`` processes; their outputs.

  gloo's CPU collectives give up after 30 s when one process reaches the first collective that
  much later (imports on a loaded 2-core host): that case is retried once, on a new port.
  """
  for attempt in range(2):
    port = free_port()
    procs = [subprocess.Popen(command(port, i, attempt), cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(count)]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    if attempt == 0 and any("Gloo context initialization failed" in o for o in outs):
      continue
    break
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
  return outs
