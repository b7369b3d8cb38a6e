"""Entry point: `python -m experiments.main --config=configs/X.py[:variant] --workdir=DIR [--config.a.b=v]`.

The job is chosen by `config.job`. An unknown override key or a value of the wrong type is an error
naming the key (ml_collections locks the config).

Multi-process (one mesh over every process's devices; docs/paper_scale/mh.md):
  --coordinator=HOST:PORT --num_processes=N --process_id=I   explicit (what experiments/launch.py passes)
  --distributed                                              auto-detect (Cloud TPU pods, SLURM, ...)
Explicit flags rather than JAX_COORDINATOR_ADDRESS & co.: jax reads only the coordinator address from the
environment (num_processes / process_id come from a cluster's auto-detection), and flags show up in `ps`,
in the launcher's command lines and in a bad-flag error, all of which name what went wrong.
"""
import ast
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file [:variant].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Multi-host: call jax.distributed.initialize() first '
                                 '(coordinator auto-detected on TPU pods / SLURM, else from JAX_COORDINATOR_* env).')
_COORDINATOR = flags.DEFINE_string('coordinator', None, 'Multi-process: HOST:PORT of process 0 (implies '
                                   '--distributed; with --num_processes and --process_id).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process: how many processes join the mesh.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process: this process, 0..num_processes-1.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # Orbax/TFDS log every step at INFO; --verbosity=0 brings it back
    logging.set_verbosity(logging.WARNING)
  import jax
  distributed_init(jax)   # before any other JAX call (a backend initialised first cannot join a mesh)
  from sleep_jax import jobs
  try:   # before anything is written: a bad value leaves no workdir behind
    jobs.validate(_CONFIG.value)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  os.makedirs(_WORKDIR.value, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(_WORKDIR.value, 'config.json'), 'w') as f:  # the resolved config of this run
      f.write(_CONFIG.value.to_json_best_effort(indent=2))
  jobs.run(_CONFIG.value, _WORKDIR.value)


def distributed_init(jax) -> None:
  """Join the other processes (explicit flags or --distributed), with gloo collectives for CPU devices."""
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise SystemExit('error: --coordinator, --num_processes and --process_id go together (got '
                       f'--coordinator={explicit[0]} --num_processes={explicit[1]} --process_id={explicit[2]}); '
                       'pass all three, or --distributed alone to auto-detect on a TPU pod / SLURM')
    if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
      raise SystemExit(f'error: --process_id={_PROCESS_ID.value} must be in [0, --num_processes='
                       f'{_NUM_PROCESSES.value})')
  elif not _DISTRIBUTED.value:
    return
  # CPU devices of different processes talk through gloo (TCP); it is jax 0.10's default, set so a changed
  # default cannot silently leave cross-process collectives unimplemented. No effect on TPU/GPU.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if _COORDINATOR.value is not None:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  else:
    jax.distributed.initialize()


def parse_flags(argv):
  """absl parsing, with a bad `--config.*` override reported in one line that names the key."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
    msg = str(e)
    while msg[:1] in '"\'' and msg[-1:] == msg[:1]:  # KeyError/AttributeError wrap the text in reprs
      msg = ast.literal_eval(msg)
    raise SystemExit(f'error: bad command-line flag or config override: {" ".join(msg.split())}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
