"""experiments/common.py (the experiments' shared harness) on the tiny model over the 8-device mesh: likelihood
scoring against an unpadded forward, SFT rows, EWC pulling towards its anchor, one new expert per sleep."""
import jax
import numpy as np
import pytest

from configs import sleep as sleep_config
from experiments import common
from sleep_jax.models.cms import variables


@pytest.fixture(scope='module')
def lab(devices8):
  return common.Lab(sleep_config.get_config('smoke'))


def test_score_matches_an_unpadded_forward(lab):
  cands = ['abc', 'a much longer candidate', 'x']
  got = lab.score(lab.params, lab.cms, 'Which one?', cands)
  for c, g in zip(cands, got):
    p, t = lab.chat('Which one?'), lab.tok.encode(c)
    ids = np.asarray([p + t])
    logits, _ = lab.b.model.apply(variables(lab.params, lab.cms), ids[:, :-1])
    x = np.asarray(logits[0], np.float64)
    lp = x - (x.max(-1, keepdims=True) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)))
    ref = sum(lp[i, ids[0, i + 1]] for i in range(len(p) - 1, ids.shape[1] - 1))
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-3)


def test_sft_rows_weigh_the_answer_only(lab):
  b = lab.sft_batch([('question?', 'answer'), (None, 'plain text')], seq_len=64)
  assert b['inputs'].shape[0] % 8 == 0 and b['weights'][2:].sum() == 0     # padding rows to the mesh weigh 0
  n_prompt = len(lab.chat('question?'))
  assert b['weights'][0, :n_prompt - 1].sum() == 0
  assert b['weights'][0].sum() == len(lab.tok.encode('answer')) + 1          # answer + EOS
  assert b['weights'][1].sum() == len(lab.tok.encode('plain text'))          # all next tokens of plain text
  np.testing.assert_array_equal(b['targets'][0, :10], b['inputs'][0, 1:11])


def test_ewc_keeps_parameters_near_the_anchor(lab):
  pairs = [('What is Zorb?', 'A town by the sea.'), (None, 'Zorb has red roofs and a tall tower.')]
  dist = lambda p: float(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2)
                             for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(lab.params))))
  fisher = jax.tree.map(np.ones_like, lab.params)
  free, l_free = lab.finetune(lab.params, lab.cms, pairs, steps=4, lr=1e-2, seed=0, batch_size=2)
  held, _ = lab.finetune(lab.params, lab.cms, pairs, steps=4, lr=1e-2, seed=0, batch_size=2,
                         ewc={'params': lab.params, 'fisher': fisher}, ewc_lambda=1e4)
  assert l_free[-1] < l_free[0]
  assert dist(held) < 0.5 * dist(free)
  f = lab.fisher(lab.params, lab.cms, pairs)
  assert all(np.all(np.asarray(x) >= 0) for x in jax.tree.leaves(f)) and any(
      np.asarray(x).max() > 0 for x in jax.tree.leaves(f))


def test_sleep_uses_one_new_expert_per_receiver_layer(lab):
  docs = [{'id': 'a', 'title': 'Zorb', 'text': 'Zorb is a town by the sea. It has red roofs and a tall tower.'}]
  before = {k: np.asarray(v).sum() for k, v in jax.tree_util.tree_leaves_with_path(lab.cms)}
  params, cms, hist = lab.sleep(lab.params, lab.cms, docs, seed=0, steps=1)
  after = {k: np.asarray(v).sum() for k, v in jax.tree_util.tree_leaves_with_path(cms)}
  grown = [k for k in after if after[k] == before[k] + 1]
  assert len(grown) == len(lab.layers()) and len(hist) == 1
  with pytest.raises(ValueError, match='no training pairs'):
    lab.finetune(lab.params, lab.cms, [], steps=1, lr=1e-3, seed=0)


def test_config_guard_reaches_an_experiments_sleep_and_fine_tuning(lab, monkeypatch):
  """config.guard (default 'stop') is the runtime's guard in every experiment: a NaN reward in a sleep, or a
  NaN loss in a fine-tuning baseline, stops it with the phase and step named."""
  from sleep_jax import rewards
  from sleep_jax.guard import NonFiniteError
  docs = [{'id': 'a', 'title': 'Zorb', 'text': 'Zorb is a town by the sea. It has red roofs and a tall tower.'}]
  with monkeypatch.context() as m:
    m.setattr(rewards, 'lti_reward', lambda r_sem, r_abs, gamma: np.full_like(r_abs, np.nan))
    with pytest.raises(NonFiniteError, match=r'^sleep/knowledge-seeding: non-finite .*=nan.* at step 1'):
      lab.sleep(lab.params, lab.cms, docs, seed=0, steps=1)
    real = common.Lab.sft_batch
    m.setattr(common.Lab, 'sft_batch', lambda self, pairs, seq_len: dict(
        real(self, pairs, seq_len), weights=np.full((8, seq_len), np.nan, np.float32)))
    with pytest.raises(NonFiniteError, match=r'^fine-tune: non-finite loss=nan.* at step 1'):
      lab.finetune(lab.params, lab.cms, [(None, 'Zorb has red roofs.')], steps=1, lr=1e-3, seed=0)


def test_finetune_reads_the_one_config_block(lab):
  """Every experiment's fine-tuning baseline is Lab.finetune with config.finetune's values (an argument
  overrides one); seq_len 0 means cycle.seq_len."""
  steps = lab.config.finetune.steps
  lab.config.finetune.steps = 2
  try:
    assert len(lab.finetune(lab.params, lab.cms, [(None, 'Zorb has red roofs.')], seed=0)[1]) == 2
    assert len(lab.finetune(lab.params, lab.cms, [(None, 'Zorb has red roofs.')], seed=0, steps=1)[1]) == 1
    f = common.finetune_settings(lab.config, lr=0.5)
    assert f['lr'] == 0.5 and f['steps'] == 2 and f['seq_len'] == lab.config.cycle.seq_len
  finally:
    lab.config.finetune.steps = steps
  with pytest.raises(TypeError, match='ft_steps'):
    common.finetune_settings(lab.config, ft_steps=3)


def test_mean_sd():
  assert common.mean_sd([1.0, 3.0]) == '2.0 ± 1.4' and common.mean_sd([2.0]) == '2.0 ± 0.0'


def test_results_files_are_written_whole_and_checked_when_merged(tmp_path):
  good = tmp_path / 'a' / 'results.json'
  common.write_json(str(good), {'rows': [{'seed': 0}], 'x': float('nan')})
  assert [p.name for p in good.parent.iterdir()] == ['results.json']   # no temporary left beside it
  assert common.read_results([str(good)], 'demo')[0]['rows'] == [{'seed': 0}]
  half = tmp_path / 'half.json'
  half.write_text(good.read_text()[:12])                                # a run killed while writing it
  with pytest.raises(ValueError, match='half.json is not valid JSON'):
    common.read_results([str(good), str(half)], 'demo')
  with pytest.raises(FileNotFoundError, match='missing.json does not exist'):
    common.read_results([str(tmp_path / 'missing.json')], 'demo')
  with pytest.raises(ValueError, match=r'not a demo results.json \(no streams\)'):
    common.read_results([str(good)], 'demo', ('rows', 'streams'))
