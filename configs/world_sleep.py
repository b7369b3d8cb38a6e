"""Sleep on the controlled world (the main job, `make run`): the shipped world model reads new people's bios in
context, sleeps (Knowledge Seeding + Dreaming into new experts, the same phases as on SmolLM2), and is measured on
closed-book recall of those people on held-out question templates, against the open-book ceiling, with retention
of the pretraining people (sleep_jax/jobs/world_sleep.py).

  python -m experiments.main --config=configs/world_sleep.py --workdir=runs/world_sleep
  python -m experiments.main --config=configs/world_sleep.py:smoke --workdir=/tmp/ws_smoke
  Another world model (e.g. one you trained with configs/world.py): --config.model.path=<its export folder>
  Ablations: --config.sleep.ks.alpha=1 (no LTI), =0 (no divergence), --config.sleep.ks.expand=False,
             --config.sleep.dream.enabled=False, --config.sleep.dream.selection=random,
             --config.sleep.dream.random_expert=False, --config.world_sleep.replay=0 (no generative replay)
"""
import os

import ml_collections as mlc

import sleep_jax
from configs import base
from configs import sleep as sleep_config
from configs import world as world_config

# The default world model, shipped in the package (made by configs/world.py; see its gates.json).
WORLD_MODEL = os.path.join(os.path.dirname(sleep_jax.__file__), 'data', 'world_model')


def world_sleep_fields() -> mlc.ConfigDict:
  return mlc.ConfigDict(dict(
      people=8,                  # new people consolidated in one sleep
      split='validation',        # 'validation' (knobs are chosen here) | 'test' (reported)
      questions_per_person=24,   # trained-template questions per person in the memory buffer (4 per attribute)
      restate_per_person=0,      # items whose prompt is the name: the teacher restates the bio (several facts)
      replay=1.0,                # generative-replay items per person item (0 = no replay)
      replay_kind='bos',         # 'bos': the model's own unprompted samples; 'names': questions about strangers
      retention_people=100,      # pretraining people per half measured for retention
      sizes=(1, 8, 64, 256),     # experiments/world.py --variant=many: people per sleep
      n_sleeps=8,                # --variant=sequential: sleeps in a row (`people` new people each)
      budgets=(10, 30, 100, 300)))   # --variant=budget: Knowledge Seeding / fine-tuning steps


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = base.base_config()
  c.job = 'world_sleep'
  c.model = world_config.world_model()
  c.model.update(dict(source='hf', path=WORLD_MODEL, n_experts=8, expert_rank=16))
  c.world = world_config.world_fields()
  c.world_sleep = world_sleep_fields()
  # Two CMS levels over the 4 layers: level 0 = layers 0-1 (the receivers of new experts), level 1 = layers 2-3.
  c.wake = mlc.ConfigDict(dict(
      level_of_layer=(0, 0, 1, 1), periods=(1, 10), lrs=(0.0, 0.0), n_levels=2, base_period=1, factor=10, lr=0.0,
      optimizer='sgd', train_other=False, other_lr=0.0))
  c.sleep = sleep_config.sleep_fields()
  # The paper's sleep budget (Table 5: 100 steps at batch 32): 100 updates of 8 prompts, each with one teacher
  # row and 4 student completions (40 rows); answers and replay samples are short (16 tokens).
  c.sleep.ks.update(dict(steps=100, prompts_per_step=8, group_size=4, lr=3e-3, max_new_tokens=16))
  c.sleep.dream.update(dict(n_dreams=6, top_k=2, n_random=1, rounds=2, max_new_tokens=16, inner_steps=2,
                            inner_lr=1e-2, mstep_steps=2, lr=3e-3, probe_rows=6))
  c.finetune = base.finetune_fields()
  # lr 3e-4: the largest of 1e-4 / 3e-4 / 1e-3 keeping QA retention >= 95% on 8 validation people (bios, all weights)
  c.finetune.update(dict(steps=100, lr=3e-4, batch_size=8, seq_len=80))
  c.sampling.prompt_buckets = (16, 32, 48, 64, 80, 96, 128)   # a bio + a question is 55-75 tokens
  c.sampling.gen_buckets = (16, 32, 64)
  if arg == 'smoke':
    c.world_sleep.update(dict(people=1, questions_per_person=6, retention_people=5, sizes=(1, 2), n_sleeps=2,
                              budgets=(2, 4)))
    c.finetune.update(dict(steps=3, batch_size=4))
    c.sleep.ks.update(dict(steps=3, prompts_per_step=4, group_size=2))
    c.sleep.dream.update(dict(rounds=1, n_dreams=3, top_k=1, n_random=1, mstep_steps=1))
  elif arg:
    raise ValueError(f"configs/world_sleep.py has variants '' and 'smoke', got {arg!r}")
  c.lock()
  return c
