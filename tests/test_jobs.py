"""End-to-end smoke runs of the CLI jobs through the real config path."""
import numpy as np

from sleep_jax import jobs
from tests.helpers import run_interrupted


def test_wake_job_triggers_levels_on_schedule_and_resumes(tmp_path, devices8):
  from configs import wake
  config = wake.get_config('smoke')
  full = jobs.wake(config, str(tmp_path / 'a'))
  periods = full['wake']['periods']
  expected = [{'step': s, 'level': l} for s in range(1, config.train.steps + 1)
              for l, c in enumerate(periods) if c and s % c == 0]
  assert full['triggers'] == expected
  assert full['compilations'] == 1
  resumed = run_interrupted(jobs.wake, config, tmp_path / 'b', stop_at=4)
  assert resumed['start_step'] == 4
  assert resumed['history'][-1]['loss'] == full['history'][-1]['loss']
  assert np.isfinite(full['history'][-1]['loss'])
