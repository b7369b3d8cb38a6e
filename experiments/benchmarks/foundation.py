"""Foundation benchmark: sampler and train-step throughput against Hugging Face transformers (PyTorch).

  make bench                      # = python -m experiments.benchmarks.foundation
  python -m experiments.benchmarks.foundation --reps=3 --out=runs/bench_foundation.json

Both sides run the SmolLM2-135M-Instruct architecture with the same weights (ours exported with
`sleep_jax.io.save_hf` and loaded by `LlamaForCausalLM.from_pretrained`), side by side in one process,
on the same CPU threads. Sampler: batch 8, 64-token prompts, exactly 128 new greedy tokens (no early
stop on either side). Train step: batch 8 x 256 tokens, AdamW on all parameters, float32. Reports the
median of --reps timed repetitions after one warm-up (which includes our compile) and the ratios.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from experiments.benchmarks import timing  # noqa: E402

_REPS = flags.DEFINE_integer('reps', 3, 'Timed repetitions per measurement (median reported).')
_OUT = flags.DEFINE_string('out', 'runs/bench_foundation.json', 'Where the JSON results go.')
_SKIP_HF = flags.DEFINE_bool('skip_hf', False, 'Measure only sleep_jax (no torch needed).')


_time = timing.median_time


def bench_ours(cfg, params, prompts_BP, reps, new_tokens, train_B, train_L):
  import jax
  import ml_collections as mlc
  import numpy as np
  from sleep_jax import sharding, train
  from sleep_jax.build import abstract_params
  from sleep_jax.models.llama import Transformer
  from sleep_jax.sampling import Sampler

  model = Transformer(cfg)
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  sh = sharding.logical_shardings(abstract_params(model), mesh, sharding.DEFAULT_RULES)
  p = sharding.put_tree(params, sh)
  sampler = Sampler(model, cfg, pad_id=0, eos_ids=[-1], prompt_buckets=(prompts_BP.shape[1],),
                    gen_buckets=(new_tokens,), mesh=mesh, param_shardings=sh)
  prompts = [list(r) for r in prompts_BP]
  out = {}

  def sample():
    o = sampler(p, prompts, max_new_tokens=new_tokens, rng=jax.random.key(0), temperature=0.0)
    assert o.mask.all()
    out['tokens'] = o.tokens
  t_s, ts_s = _time(sample, reps)

  tx = train.make_optimizer(mlc.ConfigDict(dict(name='adamw', lr=1e-5, b1=0.9, b2=0.999, eps=1e-8,
                                                weight_decay=0.0)), p)
  state = train.init_state(p, tx)
  st_sh = train.state_shardings(state, sh, mesh)
  state = {'s': jax.device_put(state, st_sh)}
  bsh = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES)
  step = train.make_train_step(model, tx, st_sh, bsh)
  rng = np.random.default_rng(0)
  seq = rng.integers(0, cfg.vocab_size, (train_B, train_L + 1)).astype(np.int32)
  batch = jax.device_put({'inputs': seq[:, :-1], 'targets': seq[:, 1:],
                          'weights': np.ones((train_B, train_L), np.float32)}, bsh)

  def step_once():
    state['s'], m = step(state['s'], batch)
    jax.block_until_ready(m['loss'])
  t_t, ts_t = _time(step_once, reps)
  return {'sample_s': t_s, 'sample_all_s': ts_s, 'train_s': t_t, 'train_all_s': ts_t}, out['tokens']


def bench_hf(folder, prompts_BP, reps, new_tokens, train_B, train_L):
  import numpy as np
  import torch
  from transformers import LlamaForCausalLM

  model = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
  model.eval()
  ids = torch.as_tensor(prompts_BP, dtype=torch.long)
  out = {}

  def sample():
    with torch.inference_mode():
      o = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    out['tokens'] = o[:, ids.shape[1]:].numpy()
  t_s, ts_s = _time(sample, reps)

  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  rng = np.random.default_rng(0)
  seq = torch.as_tensor(rng.integers(0, model.config.vocab_size, (train_B, train_L + 1)), dtype=torch.long)

  def step_once():
    logits = model(seq[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
  t_t, ts_t = _time(step_once, reps)
  return {'sample_s': t_s, 'sample_all_s': ts_s, 'train_s': t_t, 'train_all_s': ts_t,
          'torch': torch.__version__, 'torch_threads': torch.get_num_threads()}, out['tokens']


def machine_limits(n_params_bytes: int, reps: int):
  """This machine's float32 matmul peak (JAX and torch) and JAX's weight-streaming (gemv) bandwidth."""
  import jax
  import jax.numpy as jnp
  n = 2048
  jax_peak = timing.matmul_peak_gflops(reps, n)
  # Decode reads every weight once per step: time B=8 rows against 30 distinct 576x1536 matrices.
  ws = [jax.random.normal(jax.random.key(i), (576, 1536)) for i in range(30)]
  x = jnp.ones((8, 576))
  gemv = jax.jit(lambda x, ws: [x @ w for w in ws])
  t_gv, _ = _time(lambda: jax.block_until_ready(gemv(x, ws)), max(reps, 3))
  out = {'jax_matmul_gflops': jax_peak, 'jax_gemv_gb_s': 30 * 576 * 1536 * 4 / t_gv / 1e9}
  try:
    import torch
    ta = torch.randn(n, n)
    t_t, _ = _time(lambda: ta @ ta, max(reps, 3))
    out['torch_matmul_gflops'] = 2 * n**3 / t_t / 1e9
  except ImportError:  # --skip_hf without torch installed: report JAX's limits only
    out['torch_matmul_gflops'] = None
  out['decode_bound_tokens_s_b8'] = 8 / (n_params_bytes / (out['jax_gemv_gb_s'] * 1e9))
  return out


def train_flops(cfg, B, L) -> float:
  """Model FLOPs of one train step: 6 x params x tokens + attention scores/values (fwd+bwd)."""
  attn = 6 * 2 * cfg.n_layers * B * L * L * cfg.n_heads * cfg.head_dim
  return 6 * cfg.num_params() * B * L + attn


def main(argv):
  del argv
  import jax
  import numpy as np
  from sleep_jax import io as sio

  B, P, N, TB, TL, reps = 8, 64, 128, 8, 256, _REPS.value
  cfg, params = sio.load_gguf(sio.default_model_path())
  prompts = np.random.default_rng(0).integers(100, cfg.vocab_size, (B, P)).astype(np.int32)
  print(f'SmolLM2-135M architecture ({cfg.num_params() / 1e6:.1f}M params), {jax.default_backend()}, '
        f'{os.cpu_count()} CPUs; {reps} timed reps after a warm-up')
  limits = machine_limits(cfg.num_params() * 4, reps)
  ours, our_tokens = bench_ours(cfg, params, prompts, reps, N, TB, TL)
  res = {'machine': f'{platform.machine()} {platform.processor()} cpus={os.cpu_count()}',
         'backend': jax.default_backend(), 'jax': jax.__version__, 'reps': reps,
         'sampler': {'batch': B, 'prompt_len': P, 'new_tokens': N},
         'train': {'batch': TB, 'seq_len': TL, 'optimizer': 'adamw', 'dtype': 'float32'},
         'sleep_jax': ours, 'limits': limits, 'train_step_flops': train_flops(cfg, TB, TL)}
  rows = [('sampler tokens/s (B=8, 64+128)', B * N / ours['sample_s'], None),
          ('train-step tokens/s (8x256, AdamW)', TB * TL / ours['train_s'], None)]
  if not _SKIP_HF.value:
    from sleep_jax.io import save_hf
    with tempfile.TemporaryDirectory() as d:
      save_hf(os.path.join(d, 'm'), cfg, params)
      hf, hf_tokens = bench_hf(os.path.join(d, 'm'), prompts, reps, N, TB, TL)
    res['hf'] = hf
    res['greedy_token_agreement'] = float((our_tokens == hf_tokens).mean())
    rows = [(rows[0][0], rows[0][1], B * N / hf['sample_s']), (rows[1][0], rows[1][1], TB * TL / hf['train_s'])]
  fl = res['train_step_flops']
  rows.append(('train-step GFLOP/s (model FLOPs)', fl / ours['train_s'] / 1e9,
               fl / res['hf']['train_s'] / 1e9 if 'hf' in res else None))
  print('\n| measurement | sleep_jax | HF transformers (PyTorch) | ratio |\n|---|---:|---:|---:|')
  for name, ours_v, hf_v in rows:
    print(f'| {name} | {ours_v:,.1f} | ' + (f'{hf_v:,.1f} | {ours_v / hf_v:.2f}x |' if hf_v else '- | - |'))
  print(f"\nthis machine: f32 matmul peak {limits['jax_matmul_gflops']:.0f} GFLOP/s (JAX)"
        + (f", {limits['torch_matmul_gflops']:.0f} GFLOP/s (torch)" if limits['torch_matmul_gflops'] else '')
        + f"; weight-streaming (gemv) bandwidth {limits['jax_gemv_gb_s']:.1f} GB/s, so reading all "
        f"{cfg.num_params() * 4 / 1e6:.0f} MB of f32 weights once per decode step caps B=8 sampling at "
        f"{limits['decode_bound_tokens_s_b8']:.0f} tokens/s")
  if 'greedy_token_agreement' in res:
    print(f"\ngreedy tokens identical to HF's on {100 * res['greedy_token_agreement']:.1f}% of positions")
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(res, f, indent=2)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
