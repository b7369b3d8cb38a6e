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
import ml_collections as mlc

from configs import base


def sleep_fields() -> mlc.ConfigDict:
  """`config.sleep`: Knowledge Seeding (`ks`, see phases/consolidate.KSConfig) and the safe-sleep guard."""
  return mlc.ConfigDict(dict(
      receiver_level=0,               # context -> MLP: the new experts go to this CMS level's layers
      templates=('Tell me about {title}.', 'Complete the sentence: {prefix}'),
      prefix_prompts=4,               # sentence-prefix prompts per document
      max_probe_regression=0.05,      # reject a sleep whose retention-probe NLL rises more than 5%
      probe_seq_len=128, probe_rows=4,
      ks=mlc.ConfigDict(dict(
          # A sleep is short on 2 CPU cores (one update of 1 prompt x (1 teacher + 4 student) rows took ~15-25 s
          # with SmolLM2-135M), so few updates at an adapter-sized lr (chosen a priori, not tuned on test).
          steps=10, prompts_per_step=1, group_size=4, alpha=0.5, lam=0.5, divergence='jsd', beta=0.5,
          # gamma: weight of the judge's r_sem. The default judge (frozen SmolLM2-135M) scored identical and
          # unrelated pairs alike (p_yes ~0.2 for both, README), so r_sem is mostly noise here: 0.1.
          gamma=0.1, z0_frac=0.5, reward_unit='token', judge_hard=False,
          lr=5e-3, b1=0.9, b2=0.95, grad_clip=1.0, max_new_tokens=32, temperature=1.0,
          teacher_temperature=1.0, prefix_max_frac=0.5, expand=True)),
      # Dreaming (phases/dream.py), after consolidation in every sleep. Sizes chosen for 2 CPU cores (one round
      # on one passage: ~1-1.5 min with SmolLM2-135M; benchmarks/dreaming.py), not tuned on test.
      dream=mlc.ConfigDict(dict(
          # expert_scale: the random experts' B at its init scale barely moves SmolLM2 (README); > 1 not yet measured.
          enabled=True, n_dreams=6, top_k=2, n_random=1, selection='cosine', random_expert=True, expert_scale=1.0,
          rounds=2,
          max_new_tokens=48, temperature=1.0, inner_steps=2, inner_lr=1e-2, mstep_steps=2, lr=5e-3,
          grad_clip=1.0, generator_weight=1.0, memory_weight=1.0, reward_margin=0.0, probe_rows=6))))


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = base.base_config()
  c.job = 'sleep'
  c.model.update(dict(n_experts=2, expert_rank=16))
  c.knowledge = mlc.ConfigDict(dict(
      documents='',                    # a JSONL file of your own passages (+ optional QA) instead
      split='validation', allow_test=False, data_seed=0, n_docs=2,
      answer_tokens=24, eval_batch=16, with_context_eval=True,
      max_doc_chars=0))                # 0 = whole documents; else cut at a sentence end before this
  c.cycle = mlc.ConfigDict(dict(docs_per_sleep=2, seq_len=256, protocol=False, sleep_at_end=True))
  # The knowledge task measures consolidation of the context alone: the MLP levels do not learn while awake
  # (lr 0; attention is the fast memory). wake.lr > 0 lets them learn online, and cycle.protocol=True then
  # consolidates level l-1 into level l at its boundaries (PAPER sec. 2).
  c.wake = mlc.ConfigDict(dict(
      level_of_layer=(), periods=(), lrs=(), n_levels=2, base_period=1, factor=10, lr=0.0,
      optimizer='sgd', train_other=False, other_lr=0.0))
  c.sleep = sleep_fields()
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
