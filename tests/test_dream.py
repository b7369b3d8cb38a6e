"""Dreaming: rows and NLL against an unpadded numpy reference, gradient scores against per-row gradients, the
vmapped inner loop equals the Python loop (1 and 8 devices), selection, rewards, ReST-EM rounds that move only
the new experts, tasks, and the config's errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sleep_jax import build as build_lib
from sleep_jax import sharding
from sleep_jax.io.byte_tokenizer import ByteTokenizer
from sleep_jax.models.cms import variables
from sleep_jax.phases import consolidate as ks
from sleep_jax.phases import dream
from sleep_jax.sampling import Sampler
from tests import helpers

TOK = ByteTokenizer()
DOC = {'id': 'd1', 'title': 'Orvane', 'text': 'The Orvane bridge is painted teal every spring. It was built in the '
       'year 1544 by Pelmor masons. Its keeper is a woman called Isa Dranvek.'}
CFG = dream.DreamConfig(enabled=True, n_dreams=4, top_k=1, n_random=1, rounds=2, max_new_tokens=8,
                        inner_steps=2, inner_lr=2e-2, mstep_steps=2, lr=5e-2, probe_rows=3)


def _built(mesh=None):
  return build_lib.build(helpers.tiny_config(n_experts=3, expert_rank=4), mesh=mesh or helpers.mesh())


def _dreamer(b, dcfg=CFG, n_shards=1):
  s = Sampler(b.model, b.cfg, pad_id=TOK.pad_id, eos_ids=TOK.stop_ids, prompt_buckets=(64, 128, 256),
              gen_buckets=(8, 16), mesh=b.mesh)
  sh = sharding.batch_sharding(b.mesh, b.rules) if n_shards > 1 else None
  return dream.Dreamer(b.model, dcfg, TOK, s, batch_multiple=n_shards, batch_sharding=sh)


def _student(b):
  params, cms, index = ks.expand_student(b.params, b.cms, (1,))
  view = ks.View((1,), True)
  # a non-zero new expert (as after Knowledge Seeding), so every gradient is non-trivial
  k = jax.random.key(3)
  mlp = dict(params['layers_1']['mlp'])
  mlp['expert_b'] = mlp['expert_b'].at[index['layers_1']].set(0.05 * jax.random.normal(k, mlp['expert_b'].shape[1:]))
  params = {**params, 'layers_1': {**params['layers_1'], 'mlp': mlp}}
  return params, cms, index, view


def _flat(t):
  return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(t)).items()}


def _np_nll(b, params, cms, prompt, y):
  """Reference: the row alone, unpadded, log-softmax in float64 numpy."""
  seq = list(prompt) + list(y)
  logits, _ = b.model.apply(variables(params, cms), jnp.asarray([seq], jnp.int32))
  l = np.asarray(logits[0], np.float64)
  lp = l - np.logaddexp.reduce(l, -1, keepdims=True)
  P = len(prompt)
  return -np.array([lp[P - 1 + i, t] for i, t in enumerate(y)])


def test_completion_rows_layout():
  r = dream.completion_rows([[1, 2], [3]], [[4, 5, 6], [7]], [[9, 9, 9], [8]], pad_id=0, n_rows=4, buckets=(4, 8),
                            n_gen=4, row_w=[1.0, 0.5])
  assert r['s_tokens'].shape == (4, 8) and r['t_tokens'].shape == (4, 8)
  np.testing.assert_array_equal(r['s_tokens'][0], [0, 0, 1, 2, 9, 9, 9, 0])
  np.testing.assert_array_equal(r['t_tokens'][1], [0, 0, 0, 7, 8, 0, 0, 0])
  np.testing.assert_array_equal(r['s_valid'][1], [0, 0, 0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(r['weights'][:2], [[1, 1, 1, 0], [0.5, 0, 0, 0]])
  assert not r['weights'][2:].any() and not r['s_valid'][2:].any()


def test_nll_matches_unpadded_reference():
  b = _built()
  params, cms, index, view = _student(b)
  dr = _dreamer(b)
  prompts = [TOK.encode('Q: colour?'), TOK.encode('Tell me about the bridge')]
  ys = [TOK.encode(' teal'), TOK.encode(' It was built in 1544.')]
  rows = dream.completion_rows(prompts, prompts, ys, pad_id=TOK.pad_id, n_rows=4, buckets=(32,), n_gen=32)
  delta = dr.init_state(params, index, view)['delta']
  frozen = {'params': params, 'cms': cms, 'index': ks._index_arrays(index)}
  got = float(dream.nll(delta, frozen, rows, 's', model=b.model, view=view))
  ref = np.concatenate([_np_nll(b, params, cms, p, y) for p, y in zip(prompts, ys)]).mean()
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_grad_scores_match_per_row_gradients():
  b = _built()
  params, cms, index, view = _student(b)
  dr = _dreamer(b)
  task = dream.knowledge_task(DOC, 3)
  ys = [TOK.encode(t) for t in (' teal bridge', ' built 1544 by masons', ' Isa', ' spring paint')]
  rows = dr.dream_rows(task, ys, [0, 1, 2, 0], 4)
  probe = dr.probe_rows(task)
  delta = dr.init_state(params, index, view)['delta']
  frozen = {'params': params, 'cms': cms, 'index': ks._index_arrays(index)}
  cos, norm = dr.fns(view)['scores'](delta, frozen, rows, probe)
  loss = lambda d, r: dream.nll(d, frozen, r, 's', model=b.model, view=view)
  flat = lambda g: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(g)])
  gp = flat(jax.grad(loss)(delta, probe))
  for i in range(4):
    gi = flat(jax.grad(loss)(delta, jax.tree.map(lambda x: x[i:i + 1], rows)))
    np.testing.assert_allclose(float(norm[i]), np.linalg.norm(gi), rtol=1e-4)
    np.testing.assert_allclose(float(cos[i]), gi @ gp / np.linalg.norm(gi) / np.linalg.norm(gp), rtol=1e-3, atol=1e-5)
  assert np.all(np.abs(np.asarray(cos)) <= 1 + 1e-6) and len(set(np.round(np.asarray(cos), 6))) > 1


def _inner_inputs(b, dr, params, cms, index, view):
  task = dream.knowledge_task(DOC, 3)
  ys = [TOK.encode(t) for t in (' teal', ' built in 1544 by masons', ' Isa Dranvek', ' paint it', ' the keeper', ' bridge',
                                 ' Pelmor', ' spring')]
  rows = jax.tree.map(lambda x: x[:, None], dr.dream_rows(task, ys, [i % 3 for i in range(8)], 8))
  delta = dr.init_state(params, index, view)['delta']
  frozen = {'params': params, 'cms': cms, 'index': ks._index_arrays(index)}
  return delta, frozen, rows, dr.probe_rows(task)


def test_vmapped_inner_loop_equals_python_loop_and_1_vs_8_devices():
  b1 = _built()
  params, cms, index, view = _student(b1)
  dr = _dreamer(b1)
  delta, frozen, rows, probe = _inner_inputs(b1, dr, params, cms, index, view)
  f = dr.fns(view)
  before = _flat(params)
  tau_K, tau0, loss_KS = f['inner'](delta, frozen, rows, probe)
  for k in range(8):
    tau, ls = f['inner_one'](delta, frozen, jax.tree.map(lambda x: x[k], rows), probe)
    np.testing.assert_allclose(float(tau_K[k]), float(tau), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(loss_KS[k]), np.asarray(ls), rtol=1e-5)
  np.testing.assert_allclose(float(tau0), float(f['tau'](delta, frozen, probe)), rtol=1e-6)
  # each copy's SFT loss falls over its inner steps, and copies differ from each other
  assert np.all(np.asarray(loss_KS)[:, -1] < np.asarray(loss_KS)[:, 0])
  assert len(set(np.round(np.asarray(tau_K), 5))) > 1
  for k, v in _flat(params).items():     # the shared weights are untouched
    np.testing.assert_array_equal(before[k], v, err_msg=k)

  b8 = _built(mesh=helpers.mesh(data=8))
  p8, c8, i8, v8 = _student(b8)
  dr8 = _dreamer(b8, n_shards=8)
  d8, fr8, rows8, probe8 = _inner_inputs(b8, dr8, p8, c8, i8, v8)
  t8, t08, _ = dr8.fns(v8)['inner'](d8, fr8, dr8._put(rows8), dr8._put(probe8))
  np.testing.assert_allclose(np.asarray(t8), np.asarray(tau_K), rtol=1e-4)
  np.testing.assert_allclose(float(t08), float(tau0), rtol=1e-5)


def test_select_top_k_plus_random_and_modes():
  b = _built()
  rng = np.random.default_rng(0)
  cos = np.array([0.1, 0.9, -0.5, 0.4, 0.8, 0.0])
  norm = np.array([5.0, 1.0, 9.0, 2.0, 0.5, 3.0])
  valid = np.array([True, True, True, True, False, True])
  mk = lambda **kw: _dreamer(b, dream.DreamConfig(n_dreams=6, **kw))
  kept, _ = mk(top_k=2, n_random=1).select(cos, norm, valid, rng)
  assert list(kept[:2]) == [1, 3] and kept[2] in (0, 2, 5)        # dream 4 (0.8) is empty: never kept
  kept, _ = mk(top_k=2, n_random=0, selection='norm').select(cos, norm, valid, rng)
  assert list(kept) == [2, 0]
  kept, _ = mk(top_k=2, n_random=2, selection='random').select(cos, norm, valid, rng)
  assert len(set(kept)) == 4 and 4 not in kept


def test_rounds_train_only_the_new_expert_and_reward_is_improvement():
  b = _built()
  params, cms, index, view = _student(b)
  dr = _dreamer(b)
  tasks = [dream.knowledge_task(DOC, 3)]
  seen = []
  st, hist = dr.run(params, cms, index, view, tasks, jax.random.key(0),
                    on_round=lambda r, s, h: seen.append((r, int(s['round']))))
  assert seen == [(1, 1), (2, 2)] and int(st['round']) == 2 and [h['round'] for h in hist] == [1, 2]
  for h in hist:
    c = h['contexts'][0]
    np.testing.assert_array_equal(c['rewards'], [float(t < c['tau_orig']) for t in c['tau_copies']])
    assert len(c['kept']) == 2 and h['reward_rate'] == np.mean(c['rewards'])   # one context: its rewards' mean
    assert len(c['mstep_loss']) == (CFG.mstep_steps if any(c['rewards']) else 0)
  new = _flat(dr.commit(params, st, index, view))
  old = _flat(params)
  j = index['layers_1']
  changed = {k for k in old if not np.array_equal(old[k], new[k])}
  assert changed <= {'layers_1/mlp/expert_a', 'layers_1/mlp/expert_b'}
  for k in changed:       # only the new expert's slot moved
    other = [s for s in range(old[k].shape[0]) if s != j]
    np.testing.assert_array_equal(old[k][other], new[k][other])
  assert bool(changed) == any(h['reward_rate'] > 0 for h in hist)   # the M-step moves the expert iff rewarded
  # the jitted pieces compiled once for both rounds
  f = dr.fns(view)
  assert f['inner']._cache_size() == 1 and f['scores']._cache_size() == 1


def test_rewarded_dreams_are_learned_by_the_m_step():
  """Every kept dream rewarded by construction (reward_margin=-1e9: r = 1 unless the copy's tau is not finite),
  so the M-step must run, move the new expert, and lower its loss on the kept dreams (a no-op M-step fails)."""
  b = _built()
  params, cms, index, view = _student(b)
  dr = _dreamer(b, dataclasses.replace(CFG, rounds=1, mstep_steps=3, reward_margin=-1e9))
  st, hist = dr.run(params, cms, index, view, [dream.knowledge_task(DOC, 3)], jax.random.key(0))
  c = hist[0]['contexts'][0]
  assert c['rewards'] == [1.0, 1.0] and hist[0]['reward_rate'] == 1.0
  loss = c['mstep_loss']
  assert len(loss) == 3 and loss[2] < loss[1] < loss[0], loss   # the kept dreams' loss falls step by step
  old, new = _flat(params), _flat(dr.commit(params, st, index, view))
  j = index['layers_1']
  for k in ('layers_1/mlp/expert_a', 'layers_1/mlp/expert_b'):
    assert not np.array_equal(old[k][j], new[k][j]), k


def test_random_expert_changes_the_dreams_and_rows_draw_independently():
  b = _built()
  params, cms, index, view = _student(b)
  task = dream.knowledge_task(DOC, 3)
  d_on = _dreamer(b, dream.DreamConfig(n_dreams=4, top_k=1, n_random=0, max_new_tokens=16, temperature=0.0))
  ys_on, which = d_on.generate(params, cms, task, jax.random.key(0))
  ys_off, _ = d_on.generate(params, cms, task, jax.random.key(0), random_expert=False)
  assert which == [0, 1, 2, 0]
  assert ys_on != ys_off                 # greedy decoding: only the random experts can change the text


def test_expert_scale_grows_the_random_experts_effect_only():
  b = _built()
  params, cms, index, view = _student(b)
  toks = jnp.asarray([TOK.encode('The Orvane bridge is painted')], jnp.int32)
  fwd = lambda p, **k: np.asarray(b.model.apply(variables(p, cms), toks, **k)[0])
  big = dream.scale_inactive_experts(params, cms, 30.0)
  np.testing.assert_array_equal(fwd(params), fwd(big))           # without dreaming: the same function
  key = {'rngs': {'dream': jax.random.key(0)}}
  small = dream.scale_inactive_experts(params, cms, 0.01)
  d = lambda p: np.abs(fwd(p, **key) - fwd(params)).max()
  d_small, d1, d30 = d(small), d(params), d(big)
  assert 0 < d_small < 0.05 * d1 and d30 > d1          # the dream perturbation grows with the scale
  active = np.asarray(cms['layers_1']['mlp']['active'])
  np.testing.assert_array_equal(np.asarray(big['layers_1']['mlp']['expert_b'])[active],
                                np.asarray(params['layers_1']['mlp']['expert_b'])[active])


def test_resumed_run_continues_bit_identically():
  b = _built()
  params, cms, index, view = _student(b)
  dr = _dreamer(b)
  tasks = [dream.knowledge_task(DOC, 3)]
  ref, _ = dr.run(params, cms, index, view, tasks, jax.random.key(5))
  saved = {}
  dr.run(params, cms, index, view, tasks, jax.random.key(5),
         on_round=lambda r, s, h: saved.setdefault(r, jax.tree.map(lambda x: np.array(x), s)))
  st, hist = dr.run(params, cms, index, view, tasks, jax.random.key(5), state=jax.tree.map(jnp.asarray, saved[1]))
  assert [h['round'] for h in hist] == [2]
  for k, v in _flat(ref['delta']).items():
    np.testing.assert_array_equal(v, _flat(st['delta'])[k], err_msg=k)


def test_seal_baseline_moves_only_the_expert():
  b = _built()
  params, cms, index, view = _student(b)
  dr = _dreamer(b)
  new, hist = dr.self_edit_finetune(params, cms, index, view, [dream.knowledge_task(DOC, 3)], jax.random.key(0),
                                    steps=3)
  assert len(hist) == 3 and hist[-1] < hist[0]
  old, new = _flat(params), _flat(new)
  assert {k for k in old if not np.array_equal(old[k], new[k])} == {'layers_1/mlp/expert_a', 'layers_1/mlp/expert_b'}


def test_tasks():
  t = dream.knowledge_task(DOC, 2, seed=1)
  assert all(DOC['text'] in g for g in t.gen_prompts) and not any(DOC['text'] in m for m in t.mem_prompts)
  assert all('Orvane' in m for m in t.mem_prompts) and len(t.probe) == 2
  for p, y in t.probe:    # cloze: first half of a sentence of the passage -> its second half
    assert p.startswith('Complete the sentence: ') and f"{p[len('Complete the sentence: '):]} {y}" in DOC['text']
  arc = dream.arc_task({'train': [{'input': [[1, 0]], 'output': [[0, 1]]}, {'input': [[2]], 'output': [[2]]}]})
  assert len(arc.probe) == 2 and arc.probe[0][1] == '01' and arc.probe[1][1] == '2'
  assert arc.probe[0][0] == 'Input:\n2\nOutput:\n2\n\nInput:\n10\nOutput:'   # leave-one-out
  lang = dream.language_task('Book: ka = dog.', [('ka', 'dog')], 'Kelvi')
  assert lang.probe == [('Translate into English: ka', 'dog')] and 'Book' in lang.gen_prompts[0]
  with pytest.raises(ValueError, match='parallel'):
    dream.DreamTask('x', ['a'], [], [])


@pytest.mark.parametrize('bad, match', [
    ({'selection': 'best'}, 'selection'), ({'top_k': 5, 'n_random': 4}, 'top_k \\+ n_random'),
    ({'rounds': 0}, 'rounds'), ({'generator_weight': 0.0, 'memory_weight': 0.0}, 'generator_weight'),
    ({'expert_scale': 0.0}, 'expert_scale'),
    ({'typo': 1}, 'sleep.dream.typo')])
def test_config_errors_name_the_field(bad, match):
  with pytest.raises(ValueError, match=match):
    dream.DreamConfig.from_config({**{'n_dreams': 8}, **bad})
