"""Start N local processes of `experiments.main` joined into one mesh (multi-host on one machine).

  python -m experiments.launch --processes=2 --devices_per_process=4 -- \\
      --config=configs/lm.py:smoke --workdir=/tmp/lm_mh

Each process gets `--coordinator=127.0.0.1:PORT --num_processes=N --process_id=I` (a free port unless --port),
and, on CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=D` (fake devices) with gloo collectives; its
output lines are prefixed `[pI]`. If one process fails, the others are killed (they would otherwise wait in a
collective until the coordinator's heartbeat timeout) and the launcher exits with the failed process's code
(-9 for a SIGKILL, as subprocess reports it). On a real TPU pod / GPU cluster you do not need this: start
`experiments.main --distributed` on every host (docs/paper_scale/mh.md).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

_PROCESSES = flags.DEFINE_integer('processes', 2, 'How many processes to start.')
_DEVICES = flags.DEFINE_integer('devices_per_process', 4, 'Fake CPU devices per process (XLA_FLAGS); 0: leave '
                                'XLA_FLAGS and JAX_PLATFORMS alone (real accelerators).')
_PORT = flags.DEFINE_integer('port', 0, 'Coordinator port on 127.0.0.1; 0 picks a free one.')
_TIMEOUT = flags.DEFINE_float('timeout', 0, 'Seconds before every process is killed; 0 = no limit.')


# gloo prints one line per collective group it connects (C++, to stderr), dozens per run: not shown.
_GLOO_NOISE = re.compile(r'\[Gloo\] Rank \d+ is connected to \d+ peer ranks')


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_env(devices: int, base: dict | None = None) -> dict:
  """The environment of one process: `devices` fake CPU devices (any device-count flag in XLA_FLAGS replaced)."""
  env = dict(os.environ if base is None else base)
  if devices:
    xla = re.sub(r'--xla_force_host_platform_device_count=\S+', '', env.get('XLA_FLAGS', '')).split()
    env['XLA_FLAGS'] = ' '.join(xla + [f'--xla_force_host_platform_device_count={devices}'])
    env['JAX_PLATFORMS'] = 'cpu'
  env.setdefault('PYTHONPATH', os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return env


def commands(n: int, port: int, main_args: list[str], python: str = sys.executable) -> list[list[str]]:
  """The command line of each of the `n` processes."""
  return [[python, '-m', 'experiments.main', f'--coordinator=127.0.0.1:{port}', f'--num_processes={n}',
           f'--process_id={i}', *main_args] for i in range(n)]


def launch(main_args: list[str], n: int = 2, devices: int = 4, port: int = 0, timeout: float | None = None,
           env: dict | None = None, process_env_extra: dict[int, dict] | None = None, out=None,
           cwd: str | None = None) -> tuple[list[int], list[str]]:
  """Run `n` processes of experiments.main with `main_args` to completion; returns (return codes, outputs).

  Outputs (stdout and stderr merged, per process) are also written to `out` (default sys.stdout) line by line
  with a `[pI] ` prefix, if `out` is not False (gloo's connection lines left out). `process_env_extra[i]`:
  variables for process i only (e.g. a crash point, sleep_jax/faults.py, to kill one process of the run). When
  one process exits non-zero, or `timeout` passes, the others are SIGKILLed: a lone survivor would block in its
  next collective.
  """
  if n < 1:
    raise ValueError(f'--processes={n} must be >= 1')
  port = port or free_port()
  out = sys.stdout if out is None else out
  extra = process_env_extra or {}
  procs = [subprocess.Popen(cmd, env={**process_env(devices, env), **extra.get(i, {})}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
           for i, cmd in enumerate(commands(n, port, main_args))]
  texts = [[] for _ in procs]

  def pump(i, p):
    for line in p.stdout:
      texts[i].append(line)
      if out is not False and not _GLOO_NOISE.match(line):
        out.write(f'[p{i}] {line}')
        out.flush()

  threads = [threading.Thread(target=pump, args=(i, p), daemon=True) for i, p in enumerate(procs)]
  for t in threads:
    t.start()
  deadline = time.monotonic() + timeout if timeout else None
  try:
    while True:
      codes = [p.poll() for p in procs]   # every process polled (any() would stop at the first running one)
      if None not in codes:
        break
      failed = any(c not in (None, 0) for c in codes)
      if failed or (deadline and time.monotonic() > deadline):
        for p in procs:
          if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        break
      time.sleep(0.1)
  finally:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
      p.wait()
    for t in threads:
      t.join(timeout=10)
  return [p.returncode for p in procs], [''.join(t) for t in texts]


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('pass the arguments of experiments.main after --, e.g. '
                         '-- --config=configs/lm.py:smoke --workdir=/tmp/lm_mh')
  rcs, _ = launch(argv[1:], n=_PROCESSES.value, devices=_DEVICES.value, port=_PORT.value,
                  timeout=_TIMEOUT.value or None)
  bad = [(i, rc) for i, rc in enumerate(rcs) if rc != 0]
  if bad:
    print(f'launch: process(es) {", ".join(f"p{i} rc={rc}" for i, rc in bad)} failed', file=sys.stderr)
    sys.exit(bad[0][1] if bad[0][1] > 0 else 1)


if __name__ == '__main__':
  app.run(main)
