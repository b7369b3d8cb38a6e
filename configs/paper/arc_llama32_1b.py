"""Few-shot ARC with Llama-3.2-1B (PAPER sec. 5, SEAL protocol: 11 training / 8 held-out tasks, 5 dreams per task;
Table 5 hyper-parameters). Variants: '' = the paper's setting, 'smoke' = the tiny random model (seconds on CPU).

  python -m experiments.few_shot_arc --config=configs/paper/arc_llama32_1b.py \
      --config.model.path=/ckpt/Llama-3.2-1B-Instruct --workdir=runs/paper_arc --seeds=0,1,2
  python -m experiments.memory_plan --config=configs/paper/arc_llama32_1b.py
"""
import ml_collections as mlc

from configs import few_shot_arc
from configs.paper import _table5

VARIANTS = ('', 'smoke')


def llama32_1b(path: str = '') -> dict:
  """Llama-3.2-1B's config.json (hidden 2048, 16 layers, GQA 32/8, head_dim 64, tied, llama3 RoPE scaling)."""
  return dict(source='hf', path=path,
              vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, d_ff=8192,
              rope_base=500000.0, norm_eps=1e-5, tie_embeddings=True,
              max_seq_len=4096,   # the context cap of this run (config.json: 131072); KV cache is sized by it
              qkv_bias=False, o_bias=False, mlp_bias=False, qk_norm=False,
              rope_type='llama3', rope_factor=32.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
              rope_original_max_len=8192)


def get_config(arg: str = '') -> mlc.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'configs/paper/arc_llama32_1b.py has variants {VARIANTS}, got {arg!r}')
  c = few_shot_arc.get_config(arg)
  c.unlock()
  if not arg:
    c.model.update(llama32_1b())
  _table5.apply(c)
  # The paper's protocol: SEAL's split (sleep_jax/data/arc_seal_split.json: its 11 ARC-AGI-1 training tasks train
  # the dream generator, its 8 evaluation tasks, 9 test inputs, are held out), 5 self-edits (dreams) per task.
  # SEAL's longest held-out answer is ~271 tokens and its longest prompt ~2.6k tokens (SmolLM2's tokenizer).
  c.arc.update(dict(split='seal', n_train=0, heldout_pool=8, n_heldout=8, dreams_per_task=5, max_answer_tokens=320))
  c.sleep.dream.update(dict(n_dreams=5, max_new_tokens=256))
  c.sampling.prompt_buckets = (256, 1024, 2048, 3072)   # SEAL's longest ARC prompt is ~2.6k tokens
  c.sampling.gen_buckets = (256, 320)
  if arg == 'smoke':
    c.arc.update(dict(split='test', n_train=1, heldout_pool=2, n_heldout=1, dreams_per_task=2, max_answer_tokens=16))
    c.model.update(dict(n_experts=2, expert_rank=4, dtype='float32', param_dtype='float32'))
    c.sleep.ks.update(dict(steps=2, prompts_per_step=2, group_size=2))
    c.sleep.dream.update(dict(n_dreams=2, max_new_tokens=16))
    c.sampling.prompt_buckets = (64, 480)
    c.sampling.gen_buckets = (16,)
    c.mesh.shape.update(dict(data=-1, fsdp=1, tensor=1))
  c.lock()
  return c
