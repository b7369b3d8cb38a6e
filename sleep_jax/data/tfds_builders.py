"""TFDS builders over package-shipped and generated data, built once into the project's cache.

Every dataset is a TFDS `GeneratorBasedBuilder` written as ArrayRecord (so `tfds.data_source` gives grain
random access) whose version is its generator's VERSION: a new generator version builds a new version
directory, an unchanged one is reused. TFDS writes into an `incomplete.*` directory and renames it when
done, so a half-built dataset is never read as a whole one.

Records are heterogeneous nested dicts (passages with question lists, streams with needle lists), so each
example stores the record as one JSON text feature next to its id; `load` decodes it. One schema for all
datasets keeps the builders to a single class factory instead of one feature spec per dataset.

`load(name, split)` refuses the held-out 'test' split unless `allow_test=True` (see `splits.py`).
"""
from __future__ import annotations

import json
import os

from sleep_jax.data.registry import REGISTRY, Spec, get_spec, register  # noqa: F401  (the datasets API, re-exported)
from sleep_jax.data.splits import SPLITS, check_split


def data_dir() -> str:
  return os.environ.get('SLEEP_JAX_DATA_DIR', os.path.expanduser('~/.cache/sleep_jax/tfds'))


_BUILDERS: dict[tuple, type] = {}


def builder_class(spec: Spec):
  """A TFDS builder class for `spec` (one per name and version; TFDS registers classes by name)."""
  import tensorflow_datasets as tfds
  key = (spec.name, spec.version(), id(spec))
  if key in _BUILDERS:
    return _BUILDERS[key]

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(key[1])
    RELEASE_NOTES = {key[1]: f'generator version {key[1]}'}

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description=f'{spec.description} (source: {spec.source})',
          features=tfds.features.FeaturesDict({'id': tfds.features.Text(), 'json': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing is downloaded: sources are installed packages or generators
      return {s: self._generate_examples(s) for s in SPLITS}

    def _generate_examples(self, split):
      seen = set()
      for rec in spec.records(split):
        rid = str(rec['id'])
        if rid in seen:
          raise ValueError(f'dataset {spec.name}: duplicate record id {rid!r} in split {split}')
        seen.add(rid)
        yield rid, {'id': rid, 'json': json.dumps(rec, sort_keys=True)}

  _Builder.__name__ = _Builder.__qualname__ = spec.name
  _Builder.name = spec.name
  _BUILDERS[key] = _Builder
  return _Builder


def prepare(name: str):
  """Build `name` into `data_dir()` unless this version is already there; returns the builder."""
  spec = get_spec(name)
  import jax
  if jax.process_count() > 1:   # multi-process: process 0 builds, the others wait (two builders would race)
    from jax.experimental import multihost_utils
    if jax.process_index() == 0:
      _prepared(spec)
    multihost_utils.sync_global_devices(f'sleep_jax_tfds_prepare_{name}')
  return _prepared(spec)


def _prepared(spec):
  b = builder_class(spec)(data_dir=data_dir(), file_format='array_record')
  if not b.is_prepared():
    b.download_and_prepare()
  return b


class JsonSource:
  """Random-access source of decoded records (len / getitem), as grain's MapDataset.source expects."""

  def __init__(self, tfds_source, name: str, split: str):
    self._src, self.name, self.split = tfds_source, name, split

  def __len__(self) -> int:
    return len(self._src)

  def __getitem__(self, i: int) -> dict:
    raw = self._src[i]['json']
    return json.loads(raw.decode('utf-8') if isinstance(raw, bytes) else raw)

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __repr__(self):
    return f'JsonSource({self.name}, {self.split}, n={len(self)})'


def load(name: str, split: str, *, allow_test: bool = False) -> JsonSource:
  """Prepared dataset `name` as a random-access source of records; 'test' needs allow_test=True."""
  check_split(split, allow_test)
  b = prepare(name)
  return JsonSource(b.as_data_source(split=split), name, split)


def sizes(name: str) -> dict[str, int]:
  b = prepare(name)
  return {s: b.info.splits[s].num_examples for s in SPLITS}
