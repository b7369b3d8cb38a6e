"""Wake-side throughput of the wake/sleep cycle, side by side in one process: the old cadence (a synchronous
checkpoint and a host fetch after every wake step, one document a step) against checkpoint.every / async saves /
metrics fetched every log_every, and against several documents a wake step (cycle.docs_per_step).

  python -m experiments.benchmarks.cycle_wake                      # the tiny smoke model, this machine's devices
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.benchmarks.cycle_wake --docs=96

Each setting runs a wake-only stream (no sleep: docs_per_sleep is larger than the stream); the clock starts when
the first wake step has been dispatched (compiled) and stops when the run has returned (every save committed, every
metric fetched), so compilation is out and checkpoint writes are in. Prints a markdown table.
"""
import argparse
import os
import tempfile
import time

import jax

from configs import sleep as sleep_config
from sleep_jax import cycle as cycle_lib
from sleep_jax import faults
from sleep_jax import runtime

SETTINGS = (   # name, docs_per_step, checkpoint.every, async_save, log_every
    ('old cadence: 1 doc/step, sync save + fetch every step', 1, 1, False, 1),
    ('1 doc/step, every=100, async, log_every=10', 1, 100, True, 10),
    ('8 docs/step, every=100, async, log_every=10', 8, 100, True, 10),
)


def _config(docs_per_step, every, async_save, log_every, seq_len):
  c = sleep_config.get_config('smoke')
  with c.unlocked():
    c.cycle.update(dict(docs_per_step=docs_per_step, docs_per_sleep=8 * 1024, sleep_at_end=False, seq_len=seq_len))
    c.wake.update(dict(lr=0.01, optimizer='adamw'))   # the MLP levels learn while awake: a real update per step
    c.checkpoint.update(dict(every=every, async_save=async_save))
    c.log_every = log_every
  return c


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--docs', type=int, default=96)
  ap.add_argument('--seq_len', type=int, default=64)
  a = ap.parse_args()
  docs = [{'id': f'd{i}', 'text': f'Document {i}: the lighthouse keeper of Orvane painted the rail teal. ' * 3}
          for i in range(a.docs)]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, k, every, async_save, log_every in SETTINGS:
      c = _config(k, every, async_save, log_every, a.seq_len)
      times = []
      real = faults.point
      faults.point = lambda name: (times.append(time.perf_counter()) if name == 'wake_step' else None, real(name))
      try:
        workdir = os.path.join(tmp, f'{k}-{every}-{async_save}')
        cyc = cycle_lib.Cycle(runtime.Runtime(c), workdir, ['probe text ' * 40])
        cyc.run(docs)
        jax.block_until_ready(cyc.state)
        t = time.perf_counter() - times[0]
      finally:
        faults.point = real
      steps = len(times) - 1
      rows.append((name, steps * k / t, steps / t))
  print(f'\n{jax.device_count()} {jax.devices()[0].platform} device(s), tiny smoke model, seq_len {a.seq_len}, '
        f'{a.docs} documents\n')
  print('| setting | documents/s | wake steps/s |\n|---|---:|---:|')
  for name, dps, sps in rows:
    print(f'| {name} | {dps:.1f} | {sps:.1f} |')


if __name__ == '__main__':
  main()
