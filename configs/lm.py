"""Language-model training with the sharded pure train step, checkpoints and metrics.

  python -m experiments.main --config=configs/lm.py:smoke --workdir=/tmp/lm_smoke
  python -m experiments.main --config=configs/lm.py --workdir=runs/lm --config.mesh.shape.fsdp=2
Re-running the same command resumes from the newest checkpoint in --workdir.
"""
import ml_collections as mlc

from configs import base


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = base.base_config()
  c.job = 'lm'
  # 'tfds': a project dataset (sleep_jax/data/registry.py) packed by grain; 'synthetic': copy-task rows.
  c.data = mlc.ConfigDict(dict(source='tfds', dataset='sleep_essays', split='train', text_key='text',
                               batch_size=8, seq_len=256))
  c.train = mlc.ConfigDict(dict(steps=20))
  c.optim.lr = 3e-5
  if arg == 'smoke':
    c.model = base.tiny_model()
    c.data.update(dict(batch_size=8, seq_len=32))
    c.train.steps = 12
    c.optim.lr = 3e-3
    c.checkpoint.every = 5
    c.log_every = 2
  elif arg:
    raise ValueError(f"configs/lm.py has variants '' and 'smoke', got {arg!r}")
  c.lock()
  return c
