"""Multi-passage knowledge incorporation (the paper's continued-pretraining setting): n passages in one sleep.

  python -m experiments.multi_passage_ki --config=configs/multi_passage_ki.py --workdir=runs/multi_passage_ki
  python -m experiments.multi_passage_ki --config=configs/multi_passage_ki.py:smoke --workdir=/tmp/mp --seeds=0,1
  # SEAL's continued-pretraining setting on SQuAD v1.1: 200 validation passages in one sleep, then all their questions
  python -m experiments.multi_passage_ki --config=configs/multi_passage_ki.py:squad --config.ki.data_dir=/data/tfds \
      --workdir=runs/mp_squad --seeds=0

Starts from configs/sleep.py (SmolLM2-135M-Instruct, Knowledge Seeding into one new expert per layer of CMS level 0)
and adds `config.multi`. Sizes fit a 2-core CPU (a KS update on SmolLM2 is ~15-25 s here), chosen a priori, not tuned
on the test split.
"""
import ml_collections as mlc

from configs import sleep
from configs.knowledge_incorporation import ki_fields


def get_config(arg: str = '') -> mlc.ConfigDict:
  if arg not in ('', 'smoke', 'squad'):
    raise ValueError(f"configs/multi_passage_ki.py has variants '', 'smoke' and 'squad', got {arg!r}")
  c = sleep.get_config('smoke' if arg == 'smoke' else '')
  c.unlock()
  c.ki = ki_fields()   # passage source: invented passages (default) or SQuAD v1.1
  c.multi = mlc.ConfigDict(dict(
      sizes=(1, 4),              # n: passages consolidated together in one sleep (the paper: 1, 200, 2067);
                                 # 4 is the largest whose 3 seeds fit this session's share of a shared 2-core CPU
      split='test',              # passages and their questions: held out (validation for tuning)
      ks_steps_per_passage=3,    # Knowledge Seeding updates per passage (one prompt per update)
      seal_steps_per_passage=2,  # SEAL-style baseline: SFT steps on each passage's self-edits
      variants=('sleep', 'finetune', 'seal')))
  c.sleep.ks.prompts_per_step = 1
  # Fine-tuning baseline (all weights, AdamW, next-token on the passage texts): here finetune.steps counts updates
  # PER PASSAGE; a sleep on n passages is compared with finetune.steps x n updates.
  c.finetune.update(dict(steps=4, lr=3e-5, batch_size=2, seq_len=0))
  if arg == 'smoke':
    c.multi.update(dict(sizes=(1, 2), split='validation', ks_steps_per_passage=1,
                        seal_steps_per_passage=1))
    c.finetune.steps = 1
  elif arg == 'squad':
    # SEAL's continued-pretraining setting (scripts/CPT.sh, N_ARTICLES=200): 200 SQuAD v1.1 validation passages
    c.ki.source = 'squad'
    c.multi.sizes = (200,)
  c.lock()
  return c
