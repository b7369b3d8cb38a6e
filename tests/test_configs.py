"""One source of defaults: the shipped config's `sleep.ks` / `sleep.dream` blocks are the typed configs' defaults,
field for field, so the two cannot drift apart (they did once: lr 1e-3 vs 5e-3, gamma 0.5
vs 0.1, Dreaming off vs on)."""
import dataclasses

from configs import sleep as sleep_config
from sleep_jax import runtime
from sleep_jax.phases.consolidate import KSConfig
from sleep_jax.phases.dream import DreamConfig


def test_the_shipped_sleep_blocks_are_the_typed_defaults():
  c = sleep_config.get_config()
  assert c.sleep.ks.to_dict() == dataclasses.asdict(KSConfig())
  assert c.sleep.dream.to_dict() == dataclasses.asdict(DreamConfig())
  assert runtime.ks_config(c) == KSConfig() and runtime.dream_config(c) == DreamConfig()


def test_an_override_reaches_the_typed_config_and_nothing_else_moves():
  c = sleep_config.get_config()
  c.sleep.ks.lr = 1e-4
  assert runtime.ks_config(c) == dataclasses.replace(KSConfig(), lr=1e-4)
  assert runtime.ks_config(c, alpha=1.0) == dataclasses.replace(KSConfig(), lr=1e-4, alpha=1.0)
