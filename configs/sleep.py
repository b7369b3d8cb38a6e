"""The main job: a short wake/sleep cycle on the embedded SmolLM2-135M-Instruct (knowledge incorporation).

While awake the model reads a few generated passages about invented entities (one per wake step, kept in
the memory buffer); then it sleeps: Knowledge Seeding distils the model that reads the passages (teacher)
into a new low-rank expert per layer of the first CMS level of the model that does not (student), then it
dreams (implications, restatements and QA pairs of each passage, kept when an isolated fine-tune on them
helps, learned by ReST-EM) into the same experts. No-context
question answering is measured before and after, the with-context answers are the ceiling, and a retention
probe guards the sleep (safe sleep). Results go to <workdir>/results.json.

  python -m experiments.main --config=configs/sleep.py --workdir=runs/main
  python -m experiments.main --config=configs/sleep.py:smoke --workdir=/tmp/sleep_smoke
  python -m experiments.main --config=configs/sleep.py:lowmem --workdir=runs/main   # same run, less host memory
  Your own documents: --config.knowledge.documents=/path/docs.jsonl  (format: sleep_jax/data/documents.py)
  Ablations: --config.sleep.ks.alpha=1 (no LTI), =0 (no divergence), --config.sleep.ks.expand=False,
             --config.sleep.dream.enabled=False (no Dreaming), --config.sleep.dream.selection=random,
             --config.sleep.dream.random_expert=False
Re-running the same command resumes from the newest checkpoint in --workdir.
"""
import dataclasses

import ml_collections as mlc

from configs import base
from sleep_jax.phases.consolidate import KSConfig
from sleep_jax.phases.dream import DreamConfig


def sleep_fields() -> mlc.ConfigDict:
  """`config.sleep`: Knowledge Seeding (`ks`, see phases/consolidate.KSConfig) and the safe-sleep guard."""
  return mlc.ConfigDict(dict(
      receiver_level=0,               # context -> MLP: the new experts go to this CMS level's layers
      templates=('Tell me about {title}.', 'Complete the sentence: {prefix}'),
      prefix_prompts=4,               # sentence-prefix prompts per document
      max_probe_regression=0.05,      # reject a sleep whose retention-probe NLL rises more than 5%
      probe_seq_len=128, probe_rows=4,
      # A sleep activates one new expert per receiver layer. When a receiver's pool is full: 'grow' grows every
      # layer's pool before the sleep starts (function-preserving, growth.grow_pool; recorded in the checkpoint
      # lineage), 'error' stops the run naming this key.
      when_full='grow',
      grow_by=0,                      # new expert slots per growth; 0 = double the pool
      # Knowledge Seeding and Dreaming: the typed configs' defaults are the values (one source of defaults;
      # each field's comment is in phases/consolidate.KSConfig and phases/dream.DreamConfig).
      ks=mlc.ConfigDict(dataclasses.asdict(KSConfig())),
      dream=mlc.ConfigDict(dataclasses.asdict(DreamConfig()))))


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = base.base_config()
  c.job = 'sleep'
  c.model.update(dict(n_experts=2, expert_rank=16))
  c.knowledge = mlc.ConfigDict(dict(
      documents='',                    # a JSONL file of your own passages (+ optional QA) instead
      split='validation', allow_test=False, data_seed=0, n_docs=2,
      answer_tokens=24, eval_batch=16, with_context_eval=True,
      max_doc_chars=0))                # 0 = whole documents; else cut at a sentence end before this
  c.cycle = mlc.ConfigDict(dict(
      docs_per_sleep=2,                # a full memory buffer puts the model to a context -> MLP sleep
      docs_per_step=1,                 # documents per wake step, one a row (docs_per_sleep must be a multiple)
      seq_len=256,                     # tokens of a document read per wake step
      # Level -> level consolidation (PAPER sec. 2; schedule in sleep_jax/cycle.py): needs wake.lr > 0.
      protocol=False,
      # With protocol: consolidations of level l-1 into level l per period of level l. 1 = at level l's
      # boundary; C^(l)/C^(l-1) = at every boundary of l-1 (the paper's 1k/10k -> 10). Must divide C^(l)/C^(l-1).
      consolidations_per_period=1,
      sleep_at_end=True))              # sleep on a non-empty buffer after the last document
  # The knowledge task measures consolidation of the context alone: the MLP levels do not learn while awake
  # (lr 0; attention is the fast memory). wake.lr > 0 lets them learn online, and cycle.protocol=True then
  # consolidates level l-1 into level l at its boundaries (PAPER sec. 2).
  c.wake = mlc.ConfigDict(dict(
      level_of_layer=(), periods=(), lrs=(), n_levels=2, base_period=1, factor=10, lr=0.0,
      optimizer='sgd', train_other=False, other_lr=0.0))
  c.sleep = sleep_fields()
  c.finetune = base.finetune_fields()   # the experiments' fine-tuning baseline (experiments/common.Lab.finetune)
  c.sampling.prompt_buckets = (32, 64, 128, 256, 512)
  c.sampling.gen_buckets = (16, 32, 64)
  c.checkpoint.update(dict(keep=2, sleep_every=8))
  if arg == 'smoke':
    c.model = base.tiny_model()
    c.model.update(dict(n_layers=2, n_experts=2, expert_rank=4, max_seq_len=512))
    c.knowledge.update(dict(n_docs=2, answer_tokens=8, max_doc_chars=160))
    c.cycle.update(dict(docs_per_sleep=2, seq_len=256))
    c.sleep.update(dict(prefix_prompts=1, probe_seq_len=32))
    c.sleep.ks.update(dict(steps=2, max_new_tokens=8, prompts_per_step=2, group_size=2))
    c.sleep.dream.update(dict(n_dreams=4, top_k=1, n_random=1, rounds=2, max_new_tokens=8, inner_steps=2,
                              mstep_steps=2, probe_rows=2))
    c.sampling.prompt_buckets = (64, 128, 256, 384)
    c.sampling.gen_buckets = (8, 16)
    c.checkpoint.sleep_every = 1
  elif arg == 'lowmem':
    # The default run in less host memory, same results: every block is recomputed in the backward passes
    # (model.remat) instead of all 30 layers' activations being kept, which is what Dreaming's gradient
    # programs (M-step, dream scores) peaked on. Main job on 2 CPU cores: peak RSS 7.3 -> 6.2 GiB.
    c.model.remat = True
  elif arg:
    raise ValueError(f"configs/sleep.py has variants '', 'smoke' and 'lowmem', got {arg!r}")
  c.lock()
  return c
