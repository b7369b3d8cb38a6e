"""Entry point: `python -m experiments.main --config=configs/X.py[:variant] --workdir=DIR [--config.a.b=v]`.

The job is chosen by `config.job`. An unknown override key or a value of the wrong type is an error
naming the key (ml_collections locks the config).
"""
import ast
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file [:variant].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Multi-host: call jax.distributed.initialize() first '
                                 '(coordinator auto-detected on TPU pods / SLURM, else from JAX_COORDINATOR_* env).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # Orbax/TFDS log every step at INFO; --verbosity=0 brings it back
    logging.set_verbosity(logging.WARNING)
  import jax
  if _DISTRIBUTED.value:
    jax.distributed.initialize()   # before any other JAX call; each process then reads its own data shard
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
