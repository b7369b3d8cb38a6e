"""Jobs the entry point dispatches to by `config.job`. Each takes (config, workdir) and returns a results dict:
`chat` (jobs/generate.py), `lm` and `wake` (jobs/training.py), `sleep`, the main job (jobs/knowledge.py)."""
from __future__ import annotations

from sleep_jax import runtime
from sleep_jax.jobs.generate import chat
from sleep_jax.jobs.knowledge import sleep
from sleep_jax.jobs.training import lm, wake

JOBS = {'chat': chat, 'lm': lm, 'wake': wake, 'sleep': sleep}


def validate(config) -> None:
  """`runtime.validate` plus the job name: every problem of the config at once, before anything is built."""
  runtime.validate(config, [] if config.job in JOBS else [f'job={config.job!r} is not one of {sorted(JOBS)}'])


def run(config, workdir: str) -> dict:
  if config.job not in JOBS:
    raise ValueError(f'config.job={config.job!r} is not one of {sorted(JOBS)}')
  return JOBS[config.job](config, workdir)
