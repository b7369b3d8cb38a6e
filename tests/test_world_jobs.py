"""The world's jobs: pretraining (train, gates, export, cache) and the world sleep; and the shipped world model."""
import json
import os

import numpy as np
import pytest

from configs import world as world_config
from configs import world_sleep as world_sleep_config
from sleep_jax import build as build_lib
from sleep_jax.data import world as world_lib
from sleep_jax.jobs import world as world_jobs
from sleep_jax.jobs import world_sleep as ws


def test_world_job_trains_exports_and_reuses_its_cache(tmp_path, capsys):
  c = world_config.get_config('smoke')
  c.unlock()
  c.world.export = str(tmp_path / 'model')
  res = world_jobs.world(c, str(tmp_path / 'run'))
  assert not res['cached'] and os.path.isfile(tmp_path / 'model' / 'model.safetensors')
  gates = json.loads((tmp_path / 'model' / 'gates.json').read_text())
  assert set(world_lib.GATES) <= set(gates['metrics']) and gates['failed']   # 6 steps pass no gate: reported
  out = capsys.readouterr().out
  assert 'open-book QA on validation people' in out and '| NO |' in out
  again = world_jobs.world(c, str(tmp_path / 'run2'))                      # same config: found, not retrained
  assert again['cached'] and again['gates'] == gates['metrics']
  assert not os.path.exists(tmp_path / 'run2' / 'checkpoints')
  c.world.gates = True                                                      # gates on: the missed ones are named
  with pytest.raises(RuntimeError, match='closed_qa = .*needs >= 0.9'):
    world_jobs.world(c, str(tmp_path / 'run3'))


def test_config_hash_follows_what_shapes_the_model():
  c = world_config.get_config()
  h = world_jobs.config_hash(c)
  c.unlock()
  c.world.export = '/somewhere/else'
  assert world_jobs.config_hash(c) == h
  c.world.mix.open_book = 0.4
  assert world_jobs.config_hash(c) != h


def test_shipped_world_model_passes_its_gates():
  """The committed world model (sleep_jax/data/world_model) loads through the Hugging Face path (with the sleep's
  expert pools added, all inactive) and passes every gate on held-out question templates, measured here on the
  first 40 people of each group (the full measurement is its gates.json, which must record a pass)."""
  c = world_sleep_config.get_config()
  b = build_lib.build(c)
  world = world_lib.World(world_lib.spec_from(c.world))
  m = world_lib.gate_metrics(world_lib.ExactMatch(b.model, b.tokenizer), b.params, b.cms, world, seed=c.seed,
                             limit=40)
  assert world_lib.gate_failures(m) == [], world_lib.gate_table(m)
  recorded = json.loads(open(os.path.join(world_sleep_config.WORLD_MODEL, 'gates.json')).read())
  assert recorded['failed'] == [] and world_lib.gate_failures(recorded['metrics']) == []
  assert recorded['metrics']['closed_bio'] > 0.8 and recorded['steps'] == world_config.get_config().train.steps


def test_world_sleep_items_and_tasks_use_trained_templates_only():
  c = world_sleep_config.get_config()
  world = world_lib.World(world_lib.spec_from(c.world))
  tok = world_lib.make_tokenizer()
  people = world.people['validation'][:2]
  items = ws.ks_items(world, tok, people, seed=0, questions_per_person=12, replay=0.5)
  assert len(items) == 24 + 12 and sum(it.source == 'replay' for it in items) == 12
  held = {world.question(p, a, t) for p in people for a in world_lib.ATTRS for t in world_lib.questions(a, True)}
  for it in items[:24]:
    q = tok.decode(it.student)
    assert q not in held and tok.decode(it.teacher).endswith(q) and it.source in {p.name for p in people}
    assert len(it.teacher) > len(it.student) + 30            # the teacher reads a bio first
  assert all(it.student == it.teacher == [tok.bos_id] for it in items[24:])
  tasks = ws.dream_tasks(world, people, seed=0)
  assert [t.name for t in tasks] == [p.name for p in people]
  for t, p in zip(tasks, people):
    assert len(t.probe) == len(world_lib.ATTRS)
    assert all(p.name in g and m in g for g, m in zip(t.gen_prompts, t.mem_prompts))
    assert {tgt.split(' .')[0] for _, tgt in t.probe} == set(p.values)
    assert not any(m in held for m in t.mem_prompts)


def test_gap_closed():
  assert ws.gap_closed(0.1, 0.55, 1.0) == pytest.approx(0.5)
  assert np.isnan(ws.gap_closed(0.5, 0.6, 0.5))
