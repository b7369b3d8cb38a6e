"""The paper configs' memory plan (experiments/memory_plan.py) against hand computations from the models' config.json
shapes: parameter bytes per device, optimizer slots, and which slices a 7B sleep fits. eval_shape only, no device."""
import pytest

from configs.paper import arc_llama32_1b, squad_qwen25_7b
from experiments import memory_plan

GiB = 2 ** 30


def hand_params(D, L, H, K, E, F, V, tied, S, R, qkv_bias=False):
  """(all parameters, the replicated ones: norm scales and q/k/v biases) counted from the architecture,
  independently of the model code."""
  bias = (H * E + 2 * K * E) if qkv_bias else 0
  per_layer = D * E * (2 * H + 2 * K) + 3 * D * F + 2 * D + S * (2 * D * R + D) + bias
  replicated = (2 * L + 1) * D + L * bias
  return L * per_layer + V * D * (1 if tied else 2) + D, replicated


@pytest.fixture(scope='module')
def qwen():
  return memory_plan.plan(squad_qwen25_7b.get_config())


@pytest.fixture(scope='module')
def llama():
  return memory_plan.plan(arc_llama32_1b.get_config(), slices=('v5e-8', '1x16GiB'), trainable='all')


def test_qwen25_7b_parameters_per_device_match_the_hand_count(qwen):
  n, norms = hand_params(D=3584, L=28, H=28, K=4, E=128, F=18944, V=152064, tied=False, S=5, R=64, qkv_bias=True)
  base = n - 28 * 5 * (2 * 3584 * 64 + 3584)
  assert base == pytest.approx(7.62e9, rel=2e-3)   # Qwen2.5-7B: 7.62B (with its 0.13M q/k/v biases)
  assert qwen['n_params'] == n
  rows = {r['slice']: r for r in qwen['rows']}
  h100 = rows['8xH100']
  assert h100['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1}
  # bf16, every matrix FSDP-sharded 8 ways, the norm scales and biases replicated: 2 * 7.68e9 / 8 up to those.
  assert h100['params'] == 2 * (n - norms) // 8 + 2 * norms
  assert h100['params'] == pytest.approx(2 * n / 8, rel=1e-3)
  assert rows['v4-32']['params'] == 2 * (n - norms) // 16 + 2 * norms
  assert rows['1x16GiB']['params'] == 2 * n


def test_qwen25_7b_sleep_trains_one_float32_expert_per_receiver_layer_with_adamw(qwen):
  h100 = {r['slice']: r for r in qwen['rows']}['8xH100']
  receivers = 14                                    # CMS level 0 of 2 levels over 28 layers
  delta = receivers * 2 * 3584 * 64 * 4 // 8        # A [D,R] + B [R,D], float32, embed dim over fsdp=8
  assert qwen['mode'] == 'expert'
  assert h100['trainable'] == 2 * delta             # delta and its gradient
  assert h100['optimizer'] == pytest.approx(2 * delta, abs=64)   # AdamW mu, nu (+ scalar counts)


def test_qwen25_7b_fits_8xh100_and_not_one_16gib_device(qwen):
  rows = {r['slice']: r for r in qwen['rows']}
  assert rows['8xH100']['fits'] and rows['v5e-8']['fits']
  assert not rows['1x16GiB']['fits']
  assert rows['1x16GiB']['params'] > 14 * GiB      # the bf16 weights alone nearly fill it
  for r in qwen['rows']:
    assert r['total'] == sum(r[c] for c in memory_plan.COLUMNS)


def test_llama32_1b_full_finetune_plan(llama):
  n, norms = hand_params(D=2048, L=16, H=32, K=8, E=64, F=8192, V=128256, tied=True, S=5, R=64)
  assert llama['n_params'] == n
  v5e = {r['slice']: r for r in llama['rows']}['v5e-8']
  assert v5e['params'] == 2 * (n - norms) // 8 + 2 * norms
  assert v5e['trainable'] == v5e['params']          # the gradient of every bf16 weight
  assert v5e['optimizer'] == pytest.approx(2 * v5e['params'], abs=64)


def test_activation_estimate_follows_the_formula_and_remat_saves_memory():
  from sleep_jax.models.layers import ModelConfig
  kw = dict(vocab_size=100, d_model=8, n_layers=3, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=16, dtype='bfloat16')
  mesh = {'data': 1, 'fsdp': 2, 'tensor': 1}
  per_tok = 2 * (4 * 8 + 6 * 4 + 3 * 16) + 8 * 2 * 10       # a=2, L=10
  b = 2                                                     # 4 rows over fsdp=2
  assert memory_plan.activation_bytes(ModelConfig(**kw), mesh, 4, 10, 5) == 3 * b * 10 * per_tok + 8 * b * 5 * 100
  remat = memory_plan.activation_bytes(ModelConfig(**kw, remat=True), mesh, 4, 10, 5)
  assert remat == 3 * b * 10 * 8 * 2 + b * 10 * per_tok + 8 * b * 5 * 100
  assert memory_plan.activation_bytes(ModelConfig(**kw), mesh, 3, 10, 5) > 1.4 * (3 * b * 10 * per_tok)  # 3 rows
  assert memory_plan.kv_cache_bytes(ModelConfig(**kw), mesh, 4, 10) == 2 * 3 * 2 * 1 * 4 * 10 * 2


def test_a_mesh_that_does_not_fit_the_slice_is_named():
  with pytest.raises(ValueError, match='needs 4 devices'):
    memory_plan.resolve_mesh({'data': 2, 'fsdp': 2}, 8)
  with pytest.raises(ValueError, match='not one of'):
    memory_plan.plan(arc_llama32_1b.get_config('smoke'), slices=('v9-1',))


@pytest.mark.parametrize('mod', [squad_qwen25_7b, arc_llama32_1b])
def test_every_paper_config_variant_validates_plans_and_carries_table5(mod, tmp_path):
  from experiments.common import finetune_problems
  from sleep_jax import runtime
  for v in mod.VARIANTS:
    c = mod.get_config(v)
    if c.model.source == 'hf':
      c.model.path = str(tmp_path)   # the user's checkpoint folder
    runtime.validate(c, finetune_problems(c))
    k = c.sleep.ks
    assert (k.steps, k.prompts_per_step * k.group_size, k.lr) == ((100, 32, 5e-6) if v != 'smoke' else (2, 4, 5e-6))
    assert c.model.remat and c.sleep.dream.lr == c.finetune.lr == 5e-6
    if v != 'smoke':
      assert (c.model.n_experts, c.model.expert_rank, c.model.param_dtype) == (5, 64, 'bfloat16')
      p = memory_plan.plan(c, slices=('8xH100',))
      assert p['rows'][0]['fits'] and p['rows'][0]['total'] == sum(p['rows'][0][x] for x in memory_plan.COLUMNS)
  with pytest.raises(ValueError, match='variants'):
    mod.get_config('huge')
