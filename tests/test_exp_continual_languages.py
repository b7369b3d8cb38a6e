"""experiments/continual_languages.py: the smoke run end to end (files, keys, merge), and the protocol pieces that
could silently go wrong: the vocabulary-restricted books and sentences, the book cut, the ICL prompt holding only
the current book, and the table's mean ± sd against numpy."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import continual_languages as C
from experiments import continual_languages as E
from sleep_jax.data import languages as L

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
ENCODE = lambda s: list(s.encode())   # byte tokens, as the smoke model's tokenizer


def test_config_variants():
  full, smoke = C.get_config(''), C.get_config('smoke')
  assert full.model.source == 'smollm2' and full.model.n_experts >= len(full.languages.names)
  assert smoke.model.source == 'random' and smoke.model.n_experts >= len(smoke.languages.names)
  with pytest.raises(ValueError):
    C.get_config('big')


def test_data_books_cover_every_sentence_and_splits_are_apart():
  config = C.get_config('')   # SmolLM2 settings; the byte encoder only measures the books
  data = E.make_data(config, 1, 'validation', ENCODE)
  vocab = E.vocabulary(config, 1)
  assert [d['name'] for d in data] == list(config.languages.names)
  test_en = [r for _, r in data[0]['test']]
  assert len(test_en) == config.languages.n_test and len(data[0]['train']) == config.languages.n_train
  train_en = {r for _, r in data[0]['train']}
  assert not train_en & set(test_en)                                   # held-out sentences are not trained on
  for d in data:
    lang = L.language(d['name'], 1)
    assert [r for _, r in d['test']] == test_en                        # the same English sentences per language
    dictionary = d['book'][d['book'].index('## Dictionary'):]
    entries = {e.split('=')[0] for line in dictionary.split('\n')[1:] if line for e in line.split(': ')[1].split(', ')}
    assert entries == set(vocab)                                       # exactly the vocabulary, nothing else
    for user, ref in d['test'] + d['train']:
      src = user[len('Translate into English: '):]
      assert lang.translate(ref) == src                                # exact gold pairs, xx -> en
      assert set(L.lemmas(L.parse(ref))) <= vocab                      # every word is in the book
    for rule in lang.grammar_book(n_examples=0).split('## Dictionary')[0].split('\n'):
      assert rule in d['book']                                         # all grammar rules kept


def test_cut_book_stops_at_an_entry_and_fits():
  book = L.language('tamu', 0).grammar_book()
  cut = E.cut_book(book, ENCODE, 300)
  assert len(ENCODE(cut)) <= 300 and book.startswith(cut.rstrip('\n').rstrip(','))
  assert book[len(cut.rstrip('\n'))] in '\n,'                          # ends where an entry or a line ends
  assert E.cut_book(book, ENCODE, 0) == book
  with pytest.raises(ValueError):
    E.cut_book(book, ENCODE, 3)


def test_book_chunks_cover_the_book_in_order():
  book = L.language('grevok', 0).grammar_book()
  chunks = E.book_chunks(book, ENCODE, 120)
  assert '\n'.join(chunks) == book.rstrip('\n') and len(chunks) > 1
  for ch in chunks:
    assert len(ENCODE(ch)) <= 120 or '\n' not in ch                # only a single over-long line may exceed


def test_icl_prompt_holds_only_the_current_book():
  config = C.get_config('smoke')   # three languages
  config.unlock()
  config.languages.book_max_tokens = 0
  data = E.make_data(config, 0, 'validation', ENCODE)
  user = data[0]['test'][0][0]
  p = E.with_book(data[1]['book'], user)
  assert p.startswith(data[1]['book']) and p.endswith(user)
  assert data[0]['book'] not in p and data[2]['book'] not in p
  assert E.with_book(None, user) == user
  with pytest.raises(ValueError):
    E.instruction('tamu', 'x', 'xx-xx')


def test_summary_is_mean_and_sample_sd_per_seed():
  names = ['a', 'b']
  vals = {0: {('base', 0): (10, 20), ('sleep', 1): (30, 21), ('sleep', 2): (28, 35)},
          1: {('base', 0): (12, 18), ('sleep', 1): (34, 19), ('sleep', 2): (20, 41)}}
  rows = [{'seed': s, 'method': m, 'stage': k, 'lang': n, 'chrf': float(v[i])}
          for s, d in vals.items() for (m, k), v in d.items() for i, n in enumerate(names)]
  rows += [{'seed': s, 'method': 'alone_sleep', 'stage': k, 'lang': n, 'chrf': float(40 + s + k)}
           for s in (0, 1) for k, n in enumerate(names, 1)]
  table = E.summarize(rows, names, ['sleep', 'alone_sleep'])
  line = [x for x in table.split('\n') if x.startswith('| sequential sleep') and '| b (B) |' in x][0]
  a, b = np.array([28.0, 20.0]), np.array([35.0, 41.0])
  cells = [c.strip() for c in line.split('|')[3:6]]
  assert cells[0] == f'{a.mean():.1f} ± {a.std(ddof=1):.1f}'
  assert cells[1] == f'{b.mean():.1f} ± {b.std(ddof=1):.1f}'
  m = (a + b) / 2
  assert cells[2] == f'{m.mean():.1f} ± {m.std(ddof=1):.1f}'
  alone = [x for x in table.split('\n') if x.startswith('| sleep, each language alone')][0]
  assert [c.strip() for c in alone.split('|')[3:5]] == ['41.5 ± 0.7', '42.5 ± 0.7']
  # stage 0 of a sequential row is the base model
  assert E.cell(rows, 'sleep', 0, 'a') == [10.0, 12.0]


def test_smoke_run_end_to_end(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  run = lambda *a: subprocess.run([sys.executable, '-m', 'experiments.continual_languages', *a], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=1800)
  wd = tmp_path / 'run'
  r = run('--config=configs/continual_languages.py:smoke', f'--workdir={wd}', '--seeds=0,1')
  assert r.returncode == 0, r.stderr[-3000:]
  for f in ('results.json', 'table.md', 'chrf_a_vs_b.png', 'stages.png'):
    assert (wd / f).stat().st_size > 0, f
  res = json.loads((wd / 'results.json').read_text())
  names = list(C.get_config('smoke').languages.names)
  assert {'rows', 'split', 'config', 'seed', 'jax'} <= set(res) and res['split'] == 'test'
  got = {(r['seed'], r['method'], r['stage'], r['lang']) for r in res['rows']}
  for s in (0, 1):
    for n in names:
      assert (s, 'base', 0, n) in got
      for m in ('icl', 'finetune', 'sleep'):
        assert all((s, m, k, n) in got for k in range(1, len(names) + 1))
    for k, n in enumerate(names, 1):
      assert (s, 'alone_sleep', k, n) in got and (s, 'alone_finetune', k, n) in got
  assert all(len(r['outputs']) == C.get_config('smoke').languages.n_test for r in res['rows'])
  assert 'mean over languages' in (wd / 'table.md').read_text()
  # --from_results: the per-seed rows merge into the same table; a seed given twice is an error
  merged = tmp_path / 'merged'
  r = run(f'--workdir={merged}', f'--from_results={wd}/results.json')
  assert r.returncode == 0, r.stderr[-3000:]
  assert (merged / 'table.md').read_text().split('\n\n')[0] == (wd / 'table.md').read_text().split('\n\n')[0]
  r = run(f'--workdir={merged}', f'--from_results={wd}/results.json,{wd}/results.json')
  assert r.returncode != 0 and 'already merged' in r.stderr
