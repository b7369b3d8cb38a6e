"""Jobs the entry point dispatches to by `config.job`. Each takes (config, workdir) and returns a results dict:
`chat` (jobs/generate.py), `lm` and `wake` (jobs/training.py), `sleep`, the main job (jobs/knowledge.py), `world` (jobs/world.py) and `world_sleep` (jobs/world_sleep.py)."""
from __future__ import annotations

from sleep_jax import runtime
from sleep_jax.data import documents
from sleep_jax.jobs.generate import chat
from sleep_jax.jobs.knowledge import sleep
from sleep_jax.jobs.training import lm, wake
from sleep_jax.jobs import world as world_jobs, world_sleep as world_sleep_jobs  # modules (their names stay modules)

JOBS = {'chat': chat, 'lm': lm, 'wake': wake, 'sleep': sleep, 'world': world_jobs.world,
        'world_sleep': world_sleep_jobs.world_sleep}


def validate(config) -> None:
  """`runtime.validate` plus the job name and the user's documents file: every problem of the config at once,
  before anything is built or written (a bad documents file found by the job would leave a workdir behind)."""
  problems = [] if config.job in JOBS else [f'job={config.job!r} is not one of {sorted(JOBS)}']
  if 'knowledge' in config and config.knowledge.documents:
    try:   # parsing the file is cheap; no model is needed to check it
      documents.load_jsonl(config.knowledge.documents)
    except (OSError, ValueError) as e:
      problems.append(f'knowledge.documents={config.knowledge.documents!r}: {e}')
  runtime.validate(config, problems)


def run(config, workdir: str) -> dict:
  if config.job not in JOBS:
    raise ValueError(f'config.job={config.job!r} is not one of {sorted(JOBS)}')
  return JOBS[config.job](config, workdir)
