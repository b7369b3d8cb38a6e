"""Test setup: 8 fake CPU devices, set before JAX initialises its backends."""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

import sleep_jax  # noqa: E402,F401  (before any test module imports TensorFlow: sleep_jax/_env.py)

jax.config.update('jax_default_matmul_precision', 'highest')


@pytest.fixture(scope='session')
def devices8():
  devs = jax.devices()
  assert len(devs) == 8, f'expected 8 fake CPU devices, got {len(devs)}; is XLA_FLAGS set before jax import?'
  return devs


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A fresh TFDS data dir per test module (SLEEP_JAX_DATA_DIR), so dataset builds never touch the user's cache."""
  mp = pytest.MonkeyPatch()
  d = tmp_path_factory.mktemp('tfds')
  mp.setenv('SLEEP_JAX_DATA_DIR', str(d))
  yield d
  mp.undo()
