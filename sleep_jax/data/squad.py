"""SQuAD v1.1 passages for knowledge incorporation with the SEAL protocol (Zweiger et al. 2025, "Self-Adapting
Language Models", github.com/Continual-Intelligence/SEAL, folder knowledge-incorporation/).

What SEAL does (read from that repository, commit 4cb1e7d):
  * data/squad_val.json: the SQuAD v1.1 *validation* split grouped by passage (context), 2067 passages with their
    10570 questions, each question with one gold answer; passages in the order they first appear in the file.
  * src/data_generation/make_squad_data.py: `random.seed(42); random.shuffle(raw)`, then the first n passages;
    src/query/query_server.py (single passage) and src/query/CPT.py (continued pretraining, scripts/CPT.sh
    N_ARTICLES=200) take `dataset[:n_articles]` of that shuffled list. Single passage: each passage is trained on
    alone and its questions are asked without it; CPT: all n passages are trained on at once, then all their
    questions are asked.
  * src/utils.py: answers are graded by gpt-4.1 with a yes/no prompt ("does the student answer fully convey the
    gold answer?"); the metric is the share of 'yes'.

What we do: the same split (SQuAD v1.1 validation, read with TFDS's own `squad/v1.1:3.0.0` builder), grouped the
same way, one passage per record with ALL its gold answers; the selection rule is `select`: passages with at least
one question, in the order they first appear in the split as TFDS reads it, shuffled with Python's
`random.Random(seed)` (the generator SEAL uses), the first n; nested in n and the same passages for every row of
a seed. TFDS writes examples in its own (hashed, fixed) order, not the JSON file's, so seed 42 does NOT give SEAL's
exact 200 passages; it gives a fixed, seeded subset of the same split drawn by the same rule. There is no API
grader here: the metric is the official SQuAD v1.1 evaluation (normalised exact match and token F1, max over the
gold answers; `metrics.exact_match` / `metrics.token_f1`), next to the project's answer recall (a gold answer
appears in the answer). EM is stricter than SEAL's grader (a correct sentence-long answer scores 0), recall is
closer to it; numbers are not comparable with SEAL's table.

Data: TFDS downloads SQuAD only when asked to; at run time nothing is downloaded. Prepare it once on a machine with
network (docs/paper_scale/squad.md):  `tfds build squad/v1.1 --data_dir=DIR`  and point the run at DIR (config
`ki.data_dir`, default `tfds_builders.data_dir()`, i.e. $SLEEP_JAX_DATA_DIR or ~/.cache/sleep_jax/tfds).
"""
from __future__ import annotations

import hashlib
import random
from typing import Iterable, Sequence

from sleep_jax.data.splits import check_split

BUILDER = 'squad/v1.1:3.0.0'
# The project's split names -> SQuAD's. 'test' (held-out final evaluation) is SQuAD's validation split, the one SEAL
# evaluates on (SQuAD's test set is hidden); tuning ('validation') and 'train' use SQuAD's train split, whose
# articles are disjoint from the validation ones.
SPLIT_MAP = {'train': 'train', 'validation': 'train', 'test': 'validation'}
SOURCES = ('generated', 'squad')


def prepare_command(data_dir: str) -> str:
  return (f"tfds build squad/v1.1 --data_dir={data_dir}   (or in Python: tfds.load('squad/v1.1', "
          f"data_dir='{data_dir}'); on a machine with network, then copy {data_dir}/squad to this machine or GCS)")


def _text(v) -> str:
  return v.decode('utf-8') if isinstance(v, bytes) else str(v)


def examples(squad_split: str, data_dir: str = '') -> Iterable[dict]:
  """The raw SQuAD v1.1 rows of SQuAD's `squad_split` ('train' | 'validation') as python dicts, in TFDS's order."""
  import tensorflow_datasets as tfds

  from sleep_jax.data import tfds_builders
  if squad_split not in ('train', 'validation'):
    raise ValueError(f"SQuAD v1.1 has splits 'train' and 'validation', got {squad_split!r}")
  data_dir = data_dir or tfds_builders.data_dir()
  b = tfds.builder(BUILDER, data_dir=data_dir)
  try:
    ds = b.as_dataset(split=squad_split, shuffle_files=False)
  except AssertionError as e:   # TFDS's "could not find data in DIR"
    raise FileNotFoundError(f'SQuAD v1.1 ({BUILDER}) is not prepared in {data_dir}; there is no network at run '
                            f'time. Prepare it with: {prepare_command(data_dir)}; then set --config.ki.data_dir='
                            f'DIR (or SLEEP_JAX_DATA_DIR).') from e
  for ex in tfds.as_numpy(ds):
    yield {'id': _text(ex['id']), 'title': _text(ex['title']), 'context': _text(ex['context']),
           'question': _text(ex['question']), 'answers': [_text(a) for a in ex['answers']['text']]}


def group(rows: Iterable[dict]) -> list[dict]:
  """One passage per distinct context, in order of first appearance, in the schema of `knowledge.generate`
  ('id', 'title', 'text', 'questions' with 'id', 'question', 'answer' (the first gold answer), 'aliases' (every
  distinct gold answer, the first included), 'hops'), so every experiment and evaluation takes it unchanged."""
  by_ctx: dict[str, dict] = {}
  for r in rows:
    ctx = r['context']
    p = by_ctx.get(ctx)
    if p is None:
      pid = 'squad-' + hashlib.sha1(ctx.encode('utf-8')).hexdigest()[:12]
      p = by_ctx[ctx] = {'id': pid, 'title': r['title'], 'text': ctx, 'questions': [], 'split': 'squad'}
    answers = list(dict.fromkeys(a for a in r['answers'] if a.strip()))
    if not answers:
      continue   # an unanswerable row (none in v1.1) is not a question we can score
    p['questions'].append({'id': r['id'], 'question': r['question'], 'answer': answers[0], 'aliases': answers,
                           'hops': 1})
  return list(by_ctx.values())


def passages(split: str, data_dir: str = '', allow_test: bool = False) -> list[dict]:
  """SQuAD v1.1 passages of the project split `split` (SPLIT_MAP; 'test' = SQuAD validation, needs allow_test)."""
  check_split(split, allow_test)
  return group(examples(SPLIT_MAP[split], data_dir))


def select(all_passages: Sequence[dict], n: int, seed: int) -> list[dict]:
  """SEAL's selection rule: passages with >= 1 question, in their given order, shuffled by random.Random(seed)
  (SEAL: random.seed(42); random.shuffle), the first n. Nested in n; deterministic in (passages, seed)."""
  pool = [p for p in all_passages if p.get('questions')]
  if not 1 <= n <= len(pool):
    raise ValueError(f'asked for {n} passages; the split has {len(pool)} with questions')
  order = list(range(len(pool)))
  random.Random(seed).shuffle(order)
  return [pool[i] for i in order[:n]]


def knowledge_passages(ki, split: str, max_doc_chars: int = 0) -> list[dict]:
  """The passages of an experiment's `config.ki` block: 'generated' (sleep_jax/data/knowledge.py, the default)
  or 'squad' (this module); cut to `max_doc_chars` (documents.cut_docs; 0 = whole passages)."""
  from sleep_jax.data import documents, knowledge
  source = ki.source if ki is not None else 'generated'
  if source not in SOURCES:
    raise ValueError(f'ki.source={source!r}; choose one of {SOURCES}')
  if source == 'squad':
    docs = passages(split, ki.data_dir, allow_test=split == 'test')
  else:
    docs = knowledge.generate(split, allow_test=split == 'test')
  return documents.cut_docs(docs, max_doc_chars)
