"""Scalar metrics to TensorBoard + `metrics.jsonl` (clu metric writers), and a quiet-in-CI tqdm progress bar.

`metrics.jsonl` holds one JSON object per line, {"step": int, name: value, ...}, append-only and flushed per
line, so a resumed run appends to it. A run resumed from an older checkpoint logs some steps again: readers
keep the last line per step (`read_jsonl`). Python's json writes non-finite floats as NaN / Infinity.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Iterable, Mapping

import jax
import numpy as np
import tqdm
from clu import metric_writers
from etils import epath

JSONL = 'metrics.jsonl'


def _host_scalars(scalars: Mapping[str, Any]) -> dict[str, Any]:
  """One `jax.device_get` for the whole dict, then Python ints/floats; a non-scalar raises naming its key."""
  host = jax.device_get(dict(scalars))
  out = {}
  for k, v in host.items():
    a = np.asarray(v)
    if a.size != 1:
      raise ValueError(f'metric {k!r} is not a scalar (shape {a.shape})')
    v = a.reshape(()).item()
    out[k] = v if isinstance(v, (bool, int, float)) else float(v)
  return out


def _flat(d: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if hasattr(v, 'items'):
      out.update(_flat(v, key + '.'))
    else:
      out[key] = v
  return out


def _drop_torn_tail(path: str) -> None:
  """A process killed mid-write leaves a last line without its newline: cut it off before appending, so the
  resumed run's first row is not glued onto it (the resumed run logs that step again)."""
  if not os.path.exists(path):
    return
  with open(path, 'rb+') as f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b'\n':
      return
    pos = size
    while pos > 0:                      # scan back for the last complete line
      step = min(pos, 1 << 16)
      f.seek(pos - step)
      i = f.read(step).rfind(b'\n')
      if i >= 0:
        pos = pos - step + i + 1
        break
      pos -= step
    f.truncate(pos)
  logging.warning('%s: dropped a torn last line (%d bytes) left by an interrupted run', path, size - pos)


class JsonlWriter(metric_writers.MetricWriter):
  """Appends scalars to `<workdir>/metrics.jsonl`; hparams go to `<workdir>/hparams.json`; the rest is ignored."""

  def __init__(self, workdir):
    self.workdir = epath.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.path = self.workdir / JSONL
    _drop_torn_tail(os.fspath(self.path))
    self._f = open(os.fspath(self.path), 'a', encoding='utf-8')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    if 'step' in scalars:
      raise ValueError("a metric may not be called 'step' (it is the JSONL step key)")
    self._f.write(json.dumps({'step': int(step), **_host_scalars(scalars)}) + '\n')
    self._f.flush()

  def write_hparams(self, hparams: Mapping[str, Any]):
    (self.workdir / 'hparams.json').write_text(json.dumps(dict(hparams), indent=1, sort_keys=True, default=str))

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def flush(self):
    self._f.flush()

  def close(self):
    if not self._f.closed:
      self._f.close()


def read_jsonl(workdir, dedupe: bool = True) -> list[dict]:
  """Rows of `metrics.jsonl`; with dedupe, the last row per step (a resumed run's), sorted by step."""
  path = epath.Path(workdir) / JSONL
  text = path.read_text()
  lines = [line for line in text.splitlines() if line.strip()]
  if lines and not text.endswith('\n'):   # a torn last line of a run killed mid-write: not a row yet
    try:
      json.loads(lines[-1])
    except json.JSONDecodeError:
      lines.pop()
  rows = [json.loads(line) for line in lines]
  if not dedupe:
    return rows
  return sorted({r['step']: r for r in rows}.values(), key=lambda r: r['step'])


class MetricLogger:
  """Scalars every `every` steps to logging + TensorBoard + metrics.jsonl (process 0; other hosts only log)."""

  def __init__(self, workdir, every: int = 1, just_logging: bool | None = None):
    if every < 1:
      raise ValueError(f'metrics every must be >= 1, got {every}')
    self.workdir, self.every = epath.Path(workdir), every
    just_logging = jax.process_index() > 0 if just_logging is None else just_logging
    writers = [metric_writers.create_default_writer(None if just_logging else os.fspath(self.workdir),
                                                    just_logging=just_logging, asynchronous=False)]
    if not just_logging:
      writers.append(JsonlWriter(self.workdir))
    self._writer = metric_writers.MultiWriter(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any], force: bool = False) -> bool:
    """Write if step % every == 0 (or forced); arrays are fetched with one device_get only when written."""
    step = int(step)
    if not force and step % self.every:
      return False
    self._writer.write_scalars(step, _host_scalars(scalars))
    return True

  def write_hparams(self, hparams: Mapping[str, Any]):
    """Flattened ('a.b') hparams; values other than bool/int/float/str are written as strings."""
    flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in _flat(hparams).items()}
    self._writer.write_hparams(flat)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.flush()
    self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class Progress(tqdm.tqdm):
  """tqdm with `set_metrics(dict)`: one device_get, short floats in the postfix; free when disabled."""

  def set_metrics(self, metrics: Mapping[str, Any], refresh: bool = True):
    if self.disable:
      return
    vals = _host_scalars(metrics)
    self.set_postfix({k: f'{v:.4g}' if isinstance(v, float) else v for k, v in vals.items()}, refresh=refresh)


def progress(iterable_or_total: Iterable | int, desc: str = '', *, force: bool = False, **kw) -> Progress:
  """Progress bar over an iterable (or a step count); silent when the output is not a TTY unless forced."""
  if isinstance(iterable_or_total, int):
    iterable, kw['total'] = None, iterable_or_total
  else:
    iterable = iterable_or_total
  out = kw.get('file') or sys.stderr
  disable = not (force or (hasattr(out, 'isatty') and out.isatty()))
  return Progress(iterable, desc=desc, disable=disable, dynamic_ncols=True, **kw)
