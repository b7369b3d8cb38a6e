"""Results files: JSON written whole (write, then rename) and what every result records besides config and seed."""
from __future__ import annotations

import json
import os
import platform

import flax
import jax
import jaxlib
import numpy as np
import optax
import orbax.checkpoint as ocp


def write_json(path: str, obj) -> str:
  """obj as JSON, written then renamed into place: a reader never takes half a file for a whole one.
  Multi-process: only process 0 writes (every process holds the same results; two writers would race on .tmp)."""
  if jax.process_index() > 0:
    return path
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(tmp, path)
  return path


def versions() -> dict:
  """Library versions, backend and machine: what a result depends on besides config and seed."""
  return {'python': platform.python_version(), 'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'flax': flax.__version__, 'optax': optax.__version__, 'orbax_checkpoint': ocp.__version__,
          'numpy': np.__version__, 'backend': jax.default_backend(), 'devices': jax.device_count(),
          'processes': jax.process_count(),
          'machine': platform.machine(), 'processor': platform.processor() or platform.machine(),
          'cpus': os.cpu_count()}


def run_info(config) -> dict:
  """The seed and `versions()`: recorded in every results file."""
  return {'seed': config.get('seed', 0), **versions()}
