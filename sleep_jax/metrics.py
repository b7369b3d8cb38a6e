"""Scalar metrics to TensorBoard + `metrics.jsonl` (clu metric writers), and progress: a tqdm bar on a terminal,
plain status lines at most every 20 s elsewhere (CI, nohup, notebooks).

`metrics.jsonl` holds one JSON object per line, {"step": int, name: value, ...}, append-only and flushed per
line, so a resumed run appends to it. A run resumed from an older checkpoint logs some steps again: readers
keep the last line per step (`read_jsonl`). Python's json writes non-finite floats as NaN / Infinity.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping

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
  """tqdm with `set_metrics(dict)`: one device_get, short floats in the postfix (a terminal's bar)."""

  def set_metrics(self, metrics: Mapping[str, Any], refresh: bool = True):
    if self.disable:
      return
    vals = _host_scalars(metrics)
    self.set_postfix({k: f'{v:.4g}' if isinstance(v, float) else v for k, v in vals.items()}, refresh=refresh)


LINE_EVERY = 20.0   # seconds: the most a non-TTY run writes progress lines at, and the silence that triggers one


class LineLog:
  """Where non-TTY progress goes: plain status lines, at most one per `every` seconds for the whole process.

  A log file (CI, nohup, a notebook's captured output) gets no tqdm bar, whose carriage returns make one
  unreadable line. A line is written when a step ends and nothing was written for `every` seconds, and by a
  heartbeat (a daemon thread, `beat`) while a step runs for longer than that: Dreaming rounds and the first,
  compiling, steps take minutes on a CPU, and a log silent for minutes looks like a hung run. The state is shared
  by nested bars (a sleep's bars inside the wake bar), so one process writes one stream of lines, about the
  innermost running phase. `clock` is injectable for tests.
  """

  def __init__(self, clock: Callable[[], float] = time.monotonic, every: float = LINE_EVERY):
    self.clock, self.every = clock, every
    self.last: float | None = None     # when the last line was written (or the first bar started)
    self.bars: list[LineProgress] = []
    self._lock = threading.RLock()
    self._thread: threading.Thread | None = None

  def start_heartbeat(self) -> None:
    with self._lock:
      if self._thread is None:
        self._thread = threading.Thread(target=self._beat_forever, name='sleep_jax-progress', daemon=True)
        self._thread.start()

  def _beat_forever(self):
    while True:
      time.sleep(self.every / 4)
      self.beat()

  def beat(self) -> None:
    """A line about the innermost open bar's running step if nothing was written for `every` seconds."""
    with self._lock:
      if self.bars and self.last is not None and self.clock() - self.last >= self.every:
        self.bars[-1].line(running=True)

  def write(self, file, text: str) -> None:
    with self._lock:
      self.last = self.clock()
      try:
        file.write(text + '\n')
        file.flush()
      except (ValueError, OSError):   # the stream went away (a closed capture): progress is best-effort
        pass


LINES = LineLog()


class LineProgress:
  """Non-TTY progress over an iterable (or a step count): the `Progress` interface, lines through a `LineLog`.
  Metrics passed to `set_metrics` are fetched from the device only when a line is written."""

  disable = False

  def __init__(self, iterable: Iterable | None = None, desc: str = '', total: int | None = None, file=None,
               log: LineLog = LINES, **_):
    if total is None and iterable is not None and hasattr(iterable, '__len__'):
      total = len(iterable)
    self.iterable, self.desc, self.total, self.file, self.log = iterable, desc, total, file or sys.stderr, log
    self.n, self._metrics, self._printed, self._closed = 0, {}, False, False
    with log._lock:
      self.t0 = self.t_step = log.clock()
      if log.last is None:
        log.last = self.t0
      log.bars.append(self)

  def __iter__(self):
    try:
      for x in self.iterable:
        yield x
        self.update(1)
    finally:   # also when the loop stops early (an exception, a break): the bar is no longer running
      self.close()

  def __len__(self):
    return self.total or 0

  def update(self, n: int = 1):
    with self.log._lock:
      self.n += n
      self.t_step = self.log.clock()
      if self.t_step - self.log.last >= self.log.every:
        self.line()

  def set_metrics(self, metrics: Mapping[str, Any], refresh: bool = True):
    del refresh
    self._metrics = dict(metrics)

  def set_postfix(self, postfix: Mapping[str, Any] | None = None, refresh: bool = True, **kw):
    self.set_metrics({**(postfix or {}), **kw}, refresh)

  def line(self, running: bool = False, done: bool = False) -> None:
    now = self.log.clock()
    total = f'/{self.total}' if self.total is not None else ''
    parts = [f'{self.desc or "progress"}: {self.n}{total}', f'{now - self.t0:.0f} s']
    if done:
      parts[0] += ' done'
    if running:
      parts.append(f'step {self.n + 1} running for {now - self.t_step:.0f} s')
    if running:   # the heartbeat thread: host values only, never a device fetch behind the running step
      vals = {k: v for k, v in self._metrics.items() if isinstance(v, (bool, int, float))}
    else:
      vals = _host_scalars(self._metrics) if self._metrics else {}
    if vals:
      parts.append(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in vals.items()))
    self._printed = True
    self.log.write(self.file, ', '.join(parts))

  def close(self):
    with self.log._lock:
      if self._closed:
        return
      self._closed = True
      if self in self.log.bars:
        self.log.bars.remove(self)
      if self._printed:   # a phase that reported while running also says when it ends; a quick one stays silent
        self.line(done=True)


def progress(iterable_or_total: Iterable | int, desc: str = '', *, force: bool = False,
             **kw) -> Progress | LineProgress:
  """Progress over an iterable (or a step count): a tqdm bar on a TTY (or when forced), else `LineProgress`,
  a plain line at most every LINE_EVERY seconds (see `LineLog`), so a log shows a long run is alive.
  Multi-process: only process 0 shows progress (the others' bars are disabled tqdm bars that only iterate)."""
  if isinstance(iterable_or_total, int):
    iterable, kw['total'] = None, iterable_or_total
  else:
    iterable = iterable_or_total
  log = kw.pop('log', LINES)   # tests pass a LineLog with a fake clock
  out = kw.get('file') or sys.stderr
  if jax.process_index() > 0 and not force:
    return Progress(iterable, desc=desc, disable=True, **kw)
  if force or (hasattr(out, 'isatty') and out.isatty()):
    return Progress(iterable, desc=desc, dynamic_ncols=True, **kw)
  if log is LINES:
    LINES.start_heartbeat()
  return LineProgress(iterable, desc=desc, log=log, **kw)
