"""User documents for knowledge incorporation: passages (and optional questions) read from a JSONL file.

The knowledge task puts passages to sleep (the model reads them, then consolidates them into its weights) and
afterwards asks questions about them without the passage. `sleep_jax.data.knowledge` generates invented
passages; this module lets a user put their own documents to sleep instead, by pointing the config field

    knowledge.documents=/path/to/file.jsonl

at a file like this one (UTF-8, one JSON object per line; blank lines and lines starting with '#' are skipped):

    {"id": "memo-1", "text": "The kiln at Orrvane fires at 1180 degrees.", "qa": [["How hot is it?", "1180 degrees"]]}
    {"text": "Mira Tolset chairs the board.", "questions": [{"question": "Who chairs it?", "answer": "Mira Tolset"}]}

Per line: 'text' (required, non-empty string); 'id' (string, default `doc-<line number:05d>`); 'title'
(string, default the first 60 characters of the text with whitespace collapsed); 'questions', a list of
{'question', 'answer'} objects with optional 'aliases' (other accepted answers), 'id' (default
`<passage id>-q<index>`) and 'hops' (default 1); and/or the shorthand 'qa', a list of [question, answer]
pairs. A passage may have no questions (it is slept on but not quizzed). Any other key is kept as metadata,
unless it looks like a misspelt known key ('texts', 'question', 'qas'), which is an error. Passage ids, and
question ids, must be unique in the file.

`load_jsonl` returns passages in the schema of `knowledge.generate` ('id', 'title', 'text', 'questions' with
'id', 'question', 'answer', 'aliases' (which include the answer), 'hops') with 'split': 'user'. Questions are
asked with `knowledge.format_qa_prompt` and scored with `knowledge.normalize_answer` against the aliases; an
answer need not appear verbatim in the text. Every problem in a file is reported at once, as `path:LINE:
problem`. `write_jsonl` writes passages in this format, e.g. to export built-in passages as an example:

    from sleep_jax.data import documents, knowledge
    documents.write_jsonl(knowledge.generate('train')[:5], 'example.jsonl')
"""
from __future__ import annotations

import codecs
import difflib
import json
import os
from typing import Any, Iterable

import numpy as np
from etils import epath

from sleep_jax.data import knowledge

SPLIT = 'user'
TITLE_CHARS = 60
MAX_REPORTED = 100  # problems listed in one error; the rest are counted
PASSAGE_KEYS = ('id', 'title', 'text', 'questions', 'qa')
QUESTION_KEYS = ('id', 'question', 'answer', 'aliases', 'hops')
EXAMPLE_LINE = json.dumps({'id': 'doc-1', 'title': 'Kiln memo', 'text': 'The kiln at Orrvane fires at 1180 degrees.',
                           'questions': [{'question': 'At what temperature does the kiln at Orrvane fire?',
                                          'answer': '1180 degrees', 'aliases': ['1180']}]})
HINT = f'hint: each line is one JSON object with a non-empty "text", e.g. {EXAMPLE_LINE}'


def _jtype(v: Any) -> str:
  """The JSON name of a value's type, for error messages."""
  if v is None:
    return 'null'
  if isinstance(v, bool):
    return 'boolean'
  if isinstance(v, (int, float)):
    return 'number'
  return {str: 'string', list: 'array', dict: 'object'}.get(type(v), type(v).__name__)


def _short(s: str, n: int = 60) -> str:
  return repr(s if len(s) <= n else s[:n] + '...')


def _nonempty_str(v: Any, what: str, problems: list[str]) -> bool:
  if not isinstance(v, str):
    problems.append(f'{what} must be a string, got {_jtype(v)}')
    return False
  if not v.strip():
    problems.append(f'{what} is empty')
    return False
  return True


def _misspelt(obj: dict, known: tuple[str, ...], where: str, problems: list[str]) -> None:
  """Flag unknown keys that look like typos of known ones (a misspelt optional key would be silently lost)."""
  for k in obj:
    if k not in known and k != 'split':
      close = difflib.get_close_matches(k, known, n=1, cutoff=0.8)
      if close:
        problems.append(f'{where}unknown key {k!r} (did you mean {close[0]!r}?)')


def _question(q: Any, where: str, problems: list[str]) -> dict | None:
  """One entry of 'questions' in the output schema ('id' None if not given), or None with problems appended."""
  if not isinstance(q, dict):
    problems.append(f'{where} must be an object {{"question": ..., "answer": ...}}, got {_jtype(q)}')
    return None
  n = len(problems)
  _misspelt(q, QUESTION_KEYS, f'{where}: ', problems)
  for key in ('question', 'answer'):
    if key not in q:
      problems.append(f'{where}: missing {key!r}')
    else:
      _nonempty_str(q[key], f'{where}.{key}', problems)
  aliases = q.get('aliases')
  if aliases is None:
    aliases = []
  elif not isinstance(aliases, list):
    problems.append(f'{where}.aliases must be an array of strings, got {_jtype(aliases)}')
  else:
    for j, a in enumerate(aliases):
      _nonempty_str(a, f'{where}.aliases[{j}]', problems)
  hops = q.get('hops', 1)
  if isinstance(hops, bool) or not isinstance(hops, int) or hops < 1:
    problems.append(f'{where}.hops must be a positive integer, got {hops!r}')
  if q.get('id') is not None:
    _nonempty_str(q['id'], f'{where}.id', problems)
  if len(problems) > n:
    return None
  answer = q['answer']
  aliases = list(dict.fromkeys(aliases if answer in aliases else [answer, *aliases]))
  extra = {k: v for k, v in q.items() if k not in QUESTION_KEYS}
  return {'id': q.get('id'), 'question': q['question'], 'answer': answer, 'aliases': aliases, 'hops': hops,
          **extra}


def _questions(obj: dict, problems: list[str]) -> list[dict]:
  """The passage's 'questions' followed by its 'qa' pairs, each validated."""
  out = []
  qs = obj.get('questions')
  if qs is not None:
    if not isinstance(qs, list):
      problems.append(f"'questions' must be an array of objects, got {_jtype(qs)}")
    else:
      out += [_question(q, f'questions[{j}]', problems) for j, q in enumerate(qs)]
  qa = obj.get('qa')
  if qa is not None:
    if not isinstance(qa, list):
      problems.append(f"'qa' must be an array of [question, answer] pairs, got {_jtype(qa)}")
    else:
      for j, pair in enumerate(qa):
        if not isinstance(pair, list) or len(pair) != 2:
          got = f'an array of {len(pair)}' if isinstance(pair, list) else _jtype(pair)
          problems.append(f'qa[{j}] must be a [question, answer] pair, got {got}')
        else:
          out.append(_question({'question': pair[0], 'answer': pair[1]}, f'qa[{j}]', problems))
  return out


def _passage(obj: Any, line: int, problems: list[str]) -> dict | None:
  """The passage on `line` in the output schema, defaults filled in, or None with problems appended."""
  if not isinstance(obj, dict):
    problems.append(f'expected a JSON object {{"text": ...}}, got {_jtype(obj)}')
    return None
  n = len(problems)
  _misspelt(obj, PASSAGE_KEYS, '', problems)
  text = obj.get('text')
  if 'text' not in obj:
    problems.append(f"missing 'text' (keys present: {', '.join(map(str, obj)) or 'none'})")
  else:
    _nonempty_str(text, "'text'", problems)
  pid = obj.get('id')
  if pid is not None:
    _nonempty_str(pid, "'id'", problems)
  title = obj.get('title')
  if title is not None and not isinstance(title, str):
    problems.append(f"'title' must be a string, got {_jtype(title)}")
  questions = _questions(obj, problems)
  if len(problems) > n:
    return None
  pid = pid if pid is not None else f'doc-{line:05d}'
  for j, q in enumerate(questions):
    q['id'] = q['id'] if q['id'] is not None else f'{pid}-q{j}'
  extra = {k: v for k, v in obj.items() if k not in PASSAGE_KEYS and k != 'split'}
  title = title if title and title.strip() else ' '.join(text.split())[:TITLE_CHARS]
  return {'id': pid, 'title': title, 'text': text, 'questions': questions, **extra, 'split': SPLIT}


def _ids(obj: Any, line: int) -> list[tuple[str, str]]:
  """(kind, id) of the passage and of its questions (defaults included), for duplicate checks even on bad lines."""
  pid = obj.get('id') if isinstance(obj, dict) else None
  pid = f'doc-{line:05d}' if pid is None else pid
  if not isinstance(obj, dict) or not isinstance(pid, str) or not pid.strip():
    return []
  qs, qa = obj.get('questions'), obj.get('qa')
  entries = (qs if isinstance(qs, list) else []) + (qa if isinstance(qa, list) else [])
  out = [('id', pid)]
  for j, q in enumerate(entries):
    qid = q.get('id') if isinstance(q, dict) else None
    qid = f'{pid}-q{j}' if qid is None else qid
    if isinstance(qid, str) and qid.strip():
      out.append(('question id', qid))
  return out


def _parse(data: bytes, name: str) -> list[dict]:
  """Passages from the bytes of a documents file; ValueError listing every problem as `name:LINE: problem`."""
  if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
    raise ValueError(f'{name}: the file is UTF-16; save it as UTF-8 (one JSON object per line)\n{HINT}')
  if data.startswith(codecs.BOM_UTF8):
    data = data[len(codecs.BOM_UTF8):]
  problems: list[str] = []
  passages: list[dict] = []
  first_seen: dict[tuple[str, str], int] = {}
  for line, raw in enumerate(data.split(b'\n'), start=1):
    try:
      s = raw.decode('utf-8').rstrip('\r')
    except UnicodeDecodeError as e:
      problems.append(f'{name}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the '
                      f'line); save the file as UTF-8')
      continue
    if not s.strip() or s.lstrip().startswith('#'):
      continue
    try:
      obj = json.loads(s)
    except json.JSONDecodeError as e:
      problems.append(f'{name}:{line}: invalid JSON: {e.msg} (column {e.colno})')
      continue
    here: list[str] = []
    p = _passage(obj, line, here)
    for key in _ids(obj, line):
      if key in first_seen:
        here.append(f'duplicate {key[0]} {_short(key[1])} (first used on line {first_seen[key]})')
      else:
        first_seen[key] = line
    problems += [f'{name}:{line}: {msg}' for msg in here]
    if p is not None and not here:
      passages.append(p)
  if problems:
    shown = problems[:MAX_REPORTED]
    if len(problems) > MAX_REPORTED:
      shown.append(f'... and {len(problems) - MAX_REPORTED} more problems')
    raise ValueError(f'{name}: {len(problems)} problem{"s" * (len(problems) > 1)} in the documents file:\n'
                     + '\n'.join(shown) + f'\n{HINT}')
  if not passages:
    raise ValueError(f'{name}: no passages (the file is empty or has only blank and comment lines)\n{HINT}')
  return passages


def load_jsonl(path: str | os.PathLike) -> list[dict]:
  """Passages from a documents JSONL file, in the schema of `knowledge.generate` with 'split': 'user'."""
  if not os.fspath(path).strip():
    raise ValueError('the documents path is empty; set it to a JSONL file (knowledge.documents=/path/file.jsonl)')
  p = epath.Path(os.path.expanduser(os.fspath(path)))
  if not p.exists():
    raise FileNotFoundError(f'documents file not found: {p}. It should be a UTF-8 JSONL file with one passage '
                            f'per line, e.g.\n{EXAMPLE_LINE}')
  if p.is_dir():
    raise IsADirectoryError(f'documents path {p} is a directory; point it at a JSONL file')
  return _parse(p.read_bytes(), os.fspath(p))


def _jsonable(v: Any) -> Any:
  """numpy scalars and arrays to Python values."""
  if hasattr(v, 'tolist'):
    return v.tolist()
  raise TypeError(f'{type(v).__name__} is not JSON serialisable')


def write_jsonl(passages: Iterable[dict], path: str | os.PathLike) -> None:
  """Write passages (e.g. from `knowledge.generate` or `load_jsonl`) as a documents file; 'split' is dropped.

  The lines are validated as `load_jsonl` would read them before anything is written, and the file is written
  to a temporary name then renamed over `path`, so a reader never sees half a file.
  """
  lines = [json.dumps({k: v for k, v in p.items() if k != 'split'}, ensure_ascii=False, default=_jsonable)
           for p in passages]
  data = ''.join(line + '\n' for line in lines).encode('utf-8')
  dest = epath.Path(os.path.expanduser(os.fspath(path)))
  _parse(data, f'{dest} (being written)')
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = dest.with_name(f'.{dest.name}.tmp-{os.getpid()}')
  try:
    tmp.write_bytes(data)
    tmp.replace(dest)
  finally:
    if tmp.exists():
      tmp.unlink()


def load_docs(k, seed: int) -> list[dict]:
  """The documents to read while awake, from a `config.knowledge` block: a user's JSONL file (`documents`), or
  `n_docs` generated passages of `split` in an order chosen by `seed`. 'test' is held out: final evaluation
  only, with `allow_test=True`."""
  if k.documents:
    docs = load_jsonl(k.documents)
  else:
    docs = knowledge.generate(k.split, seed=k.data_seed, allow_test=k.allow_test)
    order = np.random.default_rng([seed, 0x5ee9]).permutation(len(docs))
    docs = [docs[i] for i in order]
  docs = docs[:k.n_docs] if k.n_docs else docs
  return cut_docs(docs, k.max_doc_chars)


def cut_docs(docs: list[dict], max_chars: int) -> list[dict]:
  """Fit small context windows: cut each text at the last sentence end before `max_chars` (0: unchanged)."""
  if not max_chars:
    return docs
  cut = lambda t: t if len(t) <= max_chars else t[:max(t.rfind('.', 0, max_chars) + 1, 1) or max_chars]
  return [dict(d, text=cut(d['text'])) for d in docs]
