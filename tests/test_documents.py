"""User documents JSONL: round trip with the built-in passages, defaults, shorthand, and error reporting."""
import json
import re

import pytest

from sleep_jax.data import documents as D
from sleep_jax.data import knowledge as K

PASSAGE_KEYS = ('id', 'title', 'text')
QUESTION_KEYS = ('id', 'question', 'answer', 'aliases', 'hops')


def _write(tmp_path, lines, name='docs.jsonl') -> str:
  path = tmp_path / name
  path.write_bytes(b''.join((s if isinstance(s, bytes) else s.encode('utf-8')) + b'\n' for s in lines))
  return str(path)


def _line(**kw) -> str:
  return json.dumps(kw, ensure_ascii=False)


def _error(path) -> str:
  with pytest.raises(ValueError) as e:
    D.load_jsonl(path)
  return str(e.value)


def _bad_lines(msg: str, path: str) -> set[int]:
  return {int(n) for n in re.findall(rf'^{re.escape(path)}:(\d+): ', msg, re.M)}


def test_round_trip_builtin_passages(tmp_path):
  passages = K.generate('train')[:5]
  path = str(tmp_path / 'out' / 'built_in.jsonl')
  D.write_jsonl(passages, path)
  loaded = D.load_jsonl(path)
  assert len(loaded) == 5
  for want, got in zip(passages, loaded):
    assert {k: got[k] for k in PASSAGE_KEYS} == {k: want[k] for k in PASSAGE_KEYS}
    assert [{k: q[k] for k in QUESTION_KEYS} for q in got['questions']] == \
           [{k: q[k] for k in QUESTION_KEYS} for q in want['questions']]
    assert got['split'] == 'user'
  assert not [f for f in (tmp_path / 'out').iterdir() if f.name != 'built_in.jsonl']  # no temporary left behind


def test_defaults(tmp_path):
  text = '  The kiln at Orrvane\nfires at 1180 degrees, and has done so since the spring of the wet year.'
  path = _write(tmp_path, [_line(text=text, questions=[{'question': 'How hot?', 'answer': '1180 degrees'}])])
  [p] = D.load_jsonl(path)
  assert p['id'] == 'doc-00001'
  assert p['title'] == 'The kiln at Orrvane fires at 1180 degrees, and has done so s'
  assert len(p['title']) == D.TITLE_CHARS == 60
  assert p['text'] == text
  assert p['split'] == 'user'
  assert p['questions'] == [{'id': 'doc-00001-q0', 'question': 'How hot?', 'answer': '1180 degrees',
                             'aliases': ['1180 degrees'], 'hops': 1}]


def test_explicit_fields_aliases_and_no_questions(tmp_path):
  path = _write(tmp_path, [
      _line(id='memo', title='Memo', text='A.', source='wiki',
            questions=[{'id': 'memo-how', 'question': 'Q?', 'answer': '1180', 'aliases': ['one thousand', '1180'],
                        'hops': 2}]),
      _line(text='Slept on, never quizzed.')])
  memo, quiet = D.load_jsonl(path)
  assert (memo['id'], memo['title'], memo['source']) == ('memo', 'Memo', 'wiki')
  assert memo['questions'][0] == {'id': 'memo-how', 'question': 'Q?', 'answer': '1180',
                                  'aliases': ['one thousand', '1180'], 'hops': 2}
  assert quiet['id'] == 'doc-00002' and quiet['questions'] == []


def test_qa_shorthand(tmp_path):
  path = _write(tmp_path, [_line(id='h', text='Mira Tolset chairs the harbour board.',
                                 questions=[{'question': 'What board?', 'answer': 'harbour board'}],
                                 qa=[['Who chairs the harbour board?', 'Mira Tolset'], ['Surname?', 'Tolset']])])
  [p] = D.load_jsonl(path)
  assert [(q['id'], q['question'], q['answer'], q['aliases'], q['hops']) for q in p['questions']] == [
      ('h-q0', 'What board?', 'harbour board', ['harbour board'], 1),
      ('h-q1', 'Who chairs the harbour board?', 'Mira Tolset', ['Mira Tolset'], 1),
      ('h-q2', 'Surname?', 'Tolset', ['Tolset'], 1)]


def test_blank_and_comment_lines(tmp_path):
  path = _write(tmp_path, ['# my documents', '', _line(text='First.'), '   ', '  # indented comment',
                           _line(text='Second.') + '\r'])
  got = D.load_jsonl(path)
  assert [(p['id'], p['text']) for p in got] == [('doc-00003', 'First.'), ('doc-00006', 'Second.')]


def test_every_bad_line_is_reported(tmp_path):
  path = _write(tmp_path, [
      _line(id='ok-1', text='Good.'),                                        # 1
      '{"text": "unterminated',                                              # 2 invalid JSON
      '["not", "an", "object"]',                                             # 3 not an object
      _line(title='no text here'),                                           # 4 missing text
      _line(text='   '),                                                     # 5 empty text
      _line(text=7),                                                         # 6 wrong type
      _line(text='Q without A.', questions=[{'question': 'Why?'}]),          # 7 question without answer
      _line(text='Bad qa.', qa=[['only a question']]),                       # 8 malformed pair
      _line(text='Bad aliases.', questions=[{'question': 'Q?', 'answer': 'A', 'aliases': 'A'}]),  # 9
      _line(text='Typo.', qustions=[]),                                      # 10 misspelt key
      _line(id='ok-2', text='Also good.'),                                   # 11
  ])
  msg = _error(path)
  assert _bad_lines(msg, path) == {2, 3, 4, 5, 6, 7, 8, 9, 10}
  assert '9 problems' in msg
  for needle in ('invalid JSON', 'expected a JSON object', "missing 'text'", "'text' is empty",
                 "'text' must be a string, got number", "questions[0]: missing 'answer'", 'qa[0]',
                 'questions[0].aliases must be an array', "did you mean 'questions'"):
    assert needle in msg, needle
  assert msg.splitlines()[-1].startswith('hint: ') and D.EXAMPLE_LINE in msg.splitlines()[-1]
  json.loads(D.EXAMPLE_LINE)


def test_example_line_is_valid(tmp_path):
  [p] = D.load_jsonl(_write(tmp_path, [D.EXAMPLE_LINE]))
  assert p['questions'][0]['aliases'] == ['1180 degrees', '1180']


def test_duplicate_ids(tmp_path):
  path = _write(tmp_path, [
      _line(id='a', text='One.'),                                            # 1
      _line(text='Two.'),                                                    # 2 default id doc-00002
      _line(id='a', text='Three.'),                                          # 3 duplicate of line 1
      _line(id='doc-00002', text='Four.'),                                   # 4 duplicate of line 2's default
      _line(id='b', text='Five.', questions=[{'id': 'a-q0', 'question': 'Q?', 'answer': 'A'}]),  # 5
      _line(id='c', text='Six.', questions=[{'question': 'Q?', 'answer': 'A'}]),
  ])
  msg = _error(path)
  assert _bad_lines(msg, path) == {3, 4}
  assert f"{path}:3: duplicate id 'a' (first used on line 1)" in msg
  assert f"{path}:4: duplicate id 'doc-00002' (first used on line 2)" in msg

  path = _write(tmp_path, [
      _line(id='a', text='One.', questions=[{'question': 'Q?', 'answer': 'A'}]),
      _line(id='b', text='Two.', questions=[{'id': 'a-q0', 'question': 'Q?', 'answer': 'A'}])], 'q.jsonl')
  assert f"{path}:2: duplicate question id 'a-q0' (first used on line 1)" in _error(path)


def test_utf8_bom_is_accepted(tmp_path):
  path = _write(tmp_path, [b'\xef\xbb\xbf' + _line(id='bom', text='Caf\u00e9 au lait.').encode('utf-8')])
  [p] = D.load_jsonl(path)
  assert (p['id'], p['text']) == ('bom', 'Caf\u00e9 au lait.')


def test_non_utf8_reports_the_line(tmp_path):
  path = _write(tmp_path, [_line(text='Fine.'), '# comment', _line(text='Caf\u00e9.').encode('latin-1'),
                           _line(text='Also fine.')])
  msg = _error(path)
  assert _bad_lines(msg, path) == {3}
  assert 'not valid UTF-8 (byte 0xe9' in msg
  with pytest.raises(ValueError, match='UTF-16'):
    D.load_jsonl(_write(tmp_path, [_line(text='x').encode('utf-16')], 'u16.jsonl'))


def test_empty_and_missing_files(tmp_path):
  for name, lines in (('empty.jsonl', []), ('comments.jsonl', ['# nothing yet', ''])):
    with pytest.raises(ValueError, match='no passages'):
      D.load_jsonl(_write(tmp_path, lines, name))
  missing = tmp_path / 'nope.jsonl'
  with pytest.raises(FileNotFoundError) as e:
    D.load_jsonl(missing)
  assert str(missing) in str(e.value) and 'JSONL' in str(e.value)


def test_write_rejects_what_load_would(tmp_path):
  path = tmp_path / 'bad.jsonl'
  with pytest.raises(ValueError, match="'text' is empty"):
    D.write_jsonl([{'id': 'x', 'text': ''}], path)
  assert not path.exists() and not list(tmp_path.iterdir())


def test_docstring_examples_load(tmp_path):
  lines = [s.strip() for s in D.__doc__.splitlines() if s.strip().startswith('{"')]
  assert len(lines) == 2
  memo, board = D.load_jsonl(_write(tmp_path, lines))
  assert memo['questions'][0]['answer'] == '1180 degrees' and board['questions'][0]['answer'] == 'Mira Tolset'


def test_misspelt_keys_and_long_reports(tmp_path):
  path = _write(tmp_path, [_line(texts='x', text='y'), _line(text='y', qas=[['q', 'a']])])
  msg = _error(path)
  assert "did you mean 'text'" in msg and "did you mean 'qa'" in msg
  path = _write(tmp_path, ['not json'] * (D.MAX_REPORTED + 50), 'long.jsonl')
  msg = _error(path)
  assert _bad_lines(msg, path) == set(range(1, D.MAX_REPORTED + 1))
  assert f'{D.MAX_REPORTED + 50} problems' in msg and '... and 50 more problems' in msg
