"""Wake on a stream with the Continuum Memory System (PAPER Eq. 2): CMS levels of MLP blocks, each
applying its accumulated update every C^(l) steps; the level boundaries are the sleep triggers.

  python -m experiments.main --config=configs/wake.py:smoke --workdir=/tmp/wake_smoke
  python -m experiments.main --config=configs/wake.py --workdir=runs/wake --config.wake.n_levels=3
Re-running the same command resumes from the newest checkpoint in --workdir.
"""
import ml_collections as mlc

from configs import base


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = base.base_config()
  c.job = 'wake'
  c.model.update(dict(n_experts=5, expert_rank=64))   # PAPER App. B: 5 pre-allocated experts of rank 64
  c.data = mlc.ConfigDict(dict(source='tfds', dataset='sleep_knowledge', split='train', text_key='text',
                               batch_size=4, seq_len=256))
  c.train = mlc.ConfigDict(dict(steps=40))
  # Empty level_of_layer/periods/lrs: contiguous layer groups from default_levels(n_levels, base_period,
  # factor), first layers fastest, all with lr. Set the three tuples to place levels by hand.
  c.wake = mlc.ConfigDict(dict(
      level_of_layer=(), periods=(), lrs=(), n_levels=2, base_period=4, factor=10, lr=1e-3,
      optimizer='sgd', train_other=False, other_lr=0.0))
  c.checkpoint.every = 20
  if arg == 'smoke':
    c.model = base.tiny_model()
    c.model.update(dict(n_layers=3, n_experts=3, expert_rank=4))
    c.data.update(dict(batch_size=8, seq_len=32))
    c.train.steps = 8
    c.wake.update(dict(n_levels=3, base_period=1, factor=2, lr=3e-2))
    c.checkpoint.every = 4
    c.log_every = 2
  elif arg:
    raise ValueError(f"configs/wake.py has variants '' and 'smoke', got {arg!r}")
  c.lock()
  return c
