"""seqio tasks over the project's TFDS datasets: vocabulary adapter, preprocessors, postprocessors, metrics.

Each task reads one dataset from `tfds_builders.load` (so it builds offline on first use), flattens its
records into {'inputs', 'targets'} text rows, and tokenises with the SmolLM2 tokenizer through
`vocab.TokenizerVocabulary`. Evaluation targets keep their answer aliases (JSON) for EM/F1.

The 'test' split of every task is held out: `get_dataset(split='test')` raises unless it runs inside
`with held_out():`, which only final-evaluation code enters.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import json
from typing import Callable, Iterable

from sleep_jax.data import metrics as M
from sleep_jax.data import tfds_builders
from sleep_jax.data.splits import SPLITS, check_split

_HELD_OUT = contextvars.ContextVar('sleep_jax_held_out', default=False)
PREFIX = 'sleep_'
TASKS: dict[str, str] = {}   # task name -> dataset name


@contextlib.contextmanager
def held_out():
  """Final evaluation only: lets seqio tasks read their 'test' split."""
  tok = _HELD_OUT.set(True)
  try:
    yield
  finally:
    _HELD_OUT.reset(tok)


@functools.lru_cache(maxsize=None)
def vocabulary():
  from sleep_jax import io as sio
  from sleep_jax.data.vocab import TokenizerVocabulary
  return TokenizerVocabulary(sio.Tokenizer.from_gguf(sio.default_model_path()))


def rows(dataset: str, split: str, to_rows: Callable[[dict], Iterable[dict]], allow_test: bool = False
         ) -> Iterable[dict]:
  """Flat {'id','inputs','targets','aliases'} rows of `dataset`/`split`."""
  for rec in tfds_builders.load(dataset, split, allow_test=allow_test):
    for r in to_rows(rec):
      yield {'id': str(r['id']), 'inputs': r['inputs'], 'targets': r['targets'],
             'aliases': json.dumps(r.get('aliases', [r['targets']]))}


def _postprocess(output, example=None, is_target=False):
  return output.decode().strip() if isinstance(output, bytes) else str(output).strip()


def _postprocess_aliases(output, example=None, is_target=False):
  """Targets become their alias list (EM/F1 take the best alias); predictions are stripped text."""
  if is_target and example is not None and 'aliases' in example:
    a = example['aliases']
    return json.loads(a.decode() if isinstance(a, bytes) else a)
  return _postprocess(output)


def _register(name: str, dataset: str, to_rows, metric_fns, aliases: bool = False, source_rows=None,
              extra_features: tuple[str, ...] = ()):
  """`source_rows(split, allow_test)` replaces `rows(dataset, ...)` for data that is not a project dataset (TFDS's
  own SQuAD builder); `extra_features` are more string features its rows carry (passed through untokenised)."""
  import seqio
  import tensorflow as tf

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed  # order is the built dataset's; grain pipelines shuffle for training
    # Decide here, in the caller's context: tf.data runs the generator later on another thread.
    allow = _HELD_OUT.get()
    check_split(split, allow)
    gen = (lambda: source_rows(split, allow)) if source_rows else (lambda: rows(dataset, split, to_rows, allow))
    sig = {k: tf.TensorSpec((), tf.string) for k in ('id', 'inputs', 'targets', 'aliases', *extra_features)}
    return tf.data.Dataset.from_generator(gen, output_signature=sig)

  vocab = vocabulary()
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=SPLITS),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={'inputs': seqio.Feature(vocab, add_eos=False),
                       'targets': seqio.Feature(vocab, add_eos=True)},
      postprocess_fn=_postprocess_aliases if aliases else _postprocess, metric_fns=metric_fns)
  TASKS[name] = dataset


# ---- record -> rows ---------------------------------------------------------------------------------

def _qa_rows(rec):
  from sleep_jax.data import knowledge
  for q in rec['questions']:
    yield {'id': q['id'], 'inputs': knowledge.format_qa_prompt(q['question']), 'targets': q['answer'],
           'aliases': [q['answer'], *q.get('aliases', [])]}


def _passage_rows(rec):
  yield {'id': rec['id'], 'inputs': '', 'targets': rec['text']}


def _world_qa_rows(rec):
  for i, q in enumerate(rec['questions']):
    yield {'id': f"{rec['id']}-{q['attr']}-{i}", 'inputs': q['question'], 'targets': q['answer']}


def _bio_rows(rec):
  yield {'id': rec['id'], 'inputs': '', 'targets': rec['bio']}


def _intent_rows(rec):
  yield {'id': rec['id'], 'inputs': f"Classify the intent of this request: {rec['text']}\nIntent:",
         'targets': rec['label_name']}


def _translate_rows(lang: str, direction: str):
  names = {'en': 'English'}

  def f(rec):
    if rec['lang'] != lang:
      return
    src, tgt = ('en', 'xx') if direction == 'en-xx' else ('xx', 'en')
    sname, tname = names.get(src, lang.capitalize()), names.get(tgt, lang.capitalize())
    yield {'id': f"{rec['id']}-{direction}", 'inputs': f'Translate {sname} to {tname}: {rec[src]}\n{tname}:',
           'targets': rec[tgt]}
  return f


def _long_rows(rec):
  yield {'id': rec['id'], 'inputs': f"{rec['stream']}\n\nQuestion: {rec['question']}\nAnswer:",
         'targets': rec['answer']}


def _arc_rows(rec):
  yield {'id': rec['id'], 'inputs': rec['prompt'], 'targets': rec['target']}


def _text_rows(rec):
  yield {'id': rec['id'], 'inputs': '', 'targets': rec['text']}


def squad_passage_rows(split: str, allow_test: bool = False, data_dir: str = '') -> Iterable[dict]:
  """SQuAD v1.1 grouped by passage (squad.passages): one row per passage, 'targets' the context to sleep on,
  'title', and 'questions' = JSON [{'id', 'question', 'answers': [gold answers]}]."""
  from sleep_jax.data import squad
  for p in squad.passages(split, data_dir, allow_test=allow_test):
    qs = [{'id': q['id'], 'question': q['question'], 'answers': q['aliases']} for q in p['questions']]
    yield {'id': p['id'], 'inputs': '', 'targets': p['text'], 'aliases': json.dumps([p['text']]),
           'title': p['title'], 'questions': json.dumps(qs)}


def squad_qa_rows(split: str, allow_test: bool = False, data_dir: str = '') -> Iterable[dict]:
  """SQuAD v1.1 questions asked closed book (no passage), passage by passage; aliases = every gold answer."""
  from sleep_jax.data import knowledge, squad
  for p in squad.passages(split, data_dir, allow_test=allow_test):
    for q in p['questions']:
      yield {'id': q['id'], 'inputs': knowledge.format_qa_prompt(q['question']), 'targets': q['answer'],
             'aliases': json.dumps(q['aliases'])}


def register_all() -> dict[str, str]:
  """Register every task (idempotent); returns task name -> dataset name."""
  from sleep_jax.data import languages
  _register(PREFIX + 'knowledge_qa', 'sleep_knowledge', _qa_rows, [M.exact_match, M.token_f1], aliases=True)
  _register(PREFIX + 'knowledge_passages_lm', 'sleep_knowledge', _passage_rows, [])
  _register(PREFIX + 'world_qa', 'sleep_world', _world_qa_rows, [M.exact_match], aliases=True)
  _register(PREFIX + 'world_bios_lm', 'sleep_world', _bio_rows, [])
  _register(PREFIX + 'intents', 'sleep_intents', _intent_rows, [M.accuracy])
  for lang in languages.NAMES:
    for d in ('en-xx', 'xx-en'):
      _register(f"{PREFIX}translate_{lang}_{d.replace('-', '_')}", 'sleep_languages', _translate_rows(lang, d),
                [M.chrf])
  _register(PREFIX + 'long_horizon_qa', 'sleep_long_horizon', _long_rows, [M.exact_match], aliases=True)
  _register(PREFIX + 'arc_fewshot', 'sleep_arc_fewshot', _arc_rows, [M.arc_grid_exact_match])
  _register(PREFIX + 'lm_essays', 'sleep_essays', _text_rows, [])
  _register(PREFIX + 'lm_shakespeare', 'sleep_shakespeare', _text_rows, [])
  # SQuAD v1.1 (TFDS's builder; prepared offline, see sleep_jax/data/squad.py): passages for the sleep buffer and
  # the closed-book questions (official SQuAD EM / F1 over the gold answers).
  _register(PREFIX + 'squad_v11_passages', 'squad/v1.1', None, [], source_rows=squad_passage_rows,
            extra_features=('title', 'questions'))
  _register(PREFIX + 'squad_v11_closed_book_qa', 'squad/v1.1', None, [M.exact_match, M.token_f1], aliases=True,
            source_rows=squad_qa_rows)
  return dict(TASKS)
