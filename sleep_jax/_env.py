"""Keep TensorFlow quiet and off the GPU: the one place that does it, run first by `sleep_jax/__init__.py`.

TensorFlow is only a data/IO dependency here (tf.data inside seqio/TFDS, clu's TensorBoard writer); JAX owns the
accelerators. Left alone, every process that imports it (`clu.metric_writers` does, so every job) prints on a CPU
machine:

  WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
  I0000 ... port.cc:153] oneDNN custom operations are on. ...           (twice: two TF libraries load absl)
  I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
  E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ... (303)

and on a GPU machine TF's runtime would take the GPUs (and, by default, their memory) the first time tf.data runs.

Choices, measured with TF 2.21:
- `TF_CPP_MIN_LOG_LEVEL` (set here as a default) quiets TF's runtime logging after it initialises, but not the
  lines above: they are written by absl from the libraries' static initialisers while the .so files load, before
  TF reads the variable (level 3 still prints them). No environment variable reaches them.
- `CUDA_VISIBLE_DEVICES=''` is not used: it hides the GPUs from JAX as well (and TF still fails cuInit with it).
- So a `sys.meta_path` hook catches the first `import tensorflow`, by whichever library: fd 2 is redirected to a
  temporary file while TF loads and while `tf.config.set_visible_devices([], 'GPU')` runs (that call is what
  initialises CUDA in TF, i.e. where cuInit fails on a CPU machine; it must run before TF's context starts, which
  is why it sits at import). Afterwards the captured output is written back to stderr minus exactly the known lines
  above, so anything else TF says at import (a real error) is still seen. JAX never goes through this: it keeps
  every GPU, and its own messages are untouched.
If TF was imported before sleep_jax (a notebook), `install` hides the GPUs from it if its context has not started;
the load-time lines have then already been printed.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

# The lines dropped from TF's import-time output (anything else is replayed). `cpu_feature_guard` prints a
# second line without the absl prefix; with TF_CPP_MIN_LOG_LEVEL >= 1 it is not printed at all.
_NOISE = re.compile(
    r'(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR'
    r'|[IW]\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] .*'
    r'|E\d{4} [\d:. ]+\d+ cuda_(platform|diagnostics|executor)\.cc:\d+\] .*(cuInit|CUDA driver|kernel driver).*'
    r'|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)\s*')


def filter_noise(text: str) -> str:
  """`text` without the known TF/CUDA import-time lines (see the module docstring)."""
  return ''.join(line for line in text.splitlines(keepends=True) if not _NOISE.fullmatch(line))


@contextlib.contextmanager
def quiet_stderr():
  """Capture fd 2 (C++ writes there directly, past sys.stderr) and write back all but the known noise."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):   # no usable fd 2 (a daemon): nothing to keep quiet
    yield
    return
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      with contextlib.suppress(Exception):
        sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      rest = filter_noise(tmp.read().decode('utf-8', 'replace'))
      if rest:
        os.write(2, rest.encode())


def hide_gpus(tf) -> None:
  """TF gets no GPU (JAX owns them); a no-op once TF's context has started (it cannot be changed then)."""
  with contextlib.suppress(RuntimeError, ValueError):
    tf.config.set_visible_devices([], 'GPU')


class _Loader(importlib.abc.Loader):
  """The real loader of `tensorflow`, run inside `quiet_stderr`, then GPUs hidden (still inside)."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    with quiet_stderr():
      self._loader.exec_module(module)
      hide_gpus(module)

  def __getattr__(self, name):   # resource readers, is_package, ...: the real loader's
    return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
  """Wraps the loader of the first `import tensorflow`, then leaves the import system alone."""

  def find_spec(self, name, path=None, target=None):
    if name != 'tensorflow':
      return None
    with contextlib.suppress(ValueError):
      sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.loader is not None:
      spec.loader = _Loader(spec.loader)
    return spec


def install() -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if 'tensorflow' in sys.modules:
    hide_gpus(sys.modules['tensorflow'])
  elif not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
