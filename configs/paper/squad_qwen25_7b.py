"""Knowledge incorporation on SQuAD with Qwen2.5-7B (PAPER sec. 5, first row; Table 5 hyper-parameters).

Variants: '' = single passage (one passage per sleep, experiments/knowledge_incorporation.py), 'cpt200' = continued
pretraining, n = 200 passages consolidated in one sleep (experiments/multi_passage_ki.py), 'smoke' = the same
structure on the tiny random model (seconds on CPU). Weights: a Hugging Face Qwen2.5-7B(-Instruct) folder.

  python -m experiments.knowledge_incorporation --config=configs/paper/squad_qwen25_7b.py \
      --config.model.path=/ckpt/Qwen2.5-7B-Instruct --config.ki.data_dir=/data/tfds --workdir=runs/paper_ki \
      --seeds=0 --passages=200
  python -m experiments.multi_passage_ki --config=configs/paper/squad_qwen25_7b.py:cpt200 \
      --config.model.path=/ckpt/Qwen2.5-7B-Instruct --config.ki.data_dir=/data/tfds --workdir=runs/paper_cpt200 \
      --seeds=0
  python -m experiments.memory_plan --config=configs/paper/squad_qwen25_7b.py
"""
import ml_collections as mlc

from configs import knowledge_incorporation, multi_passage_ki
from configs.paper import _table5

VARIANTS = ('', 'cpt200', 'smoke')


def qwen25_7b(path: str = '') -> dict:
  """Qwen2.5-7B's config.json (hidden 3584, 28 layers, GQA 28/4, head_dim 128, q/k/v biases, untied head)."""
  return dict(source='hf', path=path,
              vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4, head_dim=128, d_ff=18944,
              rope_base=1000000.0, norm_eps=1e-6, tie_embeddings=False,
              max_seq_len=2048,   # the context cap of this run (config.json: 32768 / 131072); KV cache is sized by it
              qkv_bias=True, o_bias=False, mlp_bias=False, qk_norm=False, rope_type='default')


def get_config(arg: str = '') -> mlc.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'configs/paper/squad_qwen25_7b.py has variants {VARIANTS}, got {arg!r}')
  smoke = arg == 'smoke'
  c = multi_passage_ki.get_config() if arg == 'cpt200' else knowledge_incorporation.get_config(arg)
  c.unlock()
  if not smoke:
    c.model.update(qwen25_7b())
  _table5.apply(c)
  # SQuAD v1.1 passages with SEAL's protocol (sleep_jax/data/squad.py); the smoke variant keeps the invented
  # passages so it runs without the TFDS data. --config.ki.data_dir points at the prepared TFDS folder.
  c.ki.source = 'generated' if smoke else 'squad'
  c.knowledge.update(dict(n_docs=1, answer_tokens=32))
  c.cycle.docs_per_sleep = 1
  c.sampling.prompt_buckets = (64, 128, 256, 512, 1024)
  c.sampling.gen_buckets = (32, 64)
  c.sleep.ks.max_new_tokens = 64
  if arg == 'cpt200':
    # n = 200 passages in one sleep (SQuAD; the invented-passage task has only 77 test passages). Table 5's 100
    # sleep steps cannot be fewer than one update per passage in multi_passage_ki (steps = ks_steps_per_passage x
    # n), so n = 200 takes 200 KS updates of batch 32.
    c.multi.update(dict(sizes=(200,), ks_steps_per_passage=1, seal_steps_per_passage=1))
    c.knowledge.n_docs = 200
    c.cycle.docs_per_sleep = 200
    c.finetune.update(dict(steps=1, batch_size=_table5.BATCH))
  if smoke:
    c.model.update(dict(n_experts=2, expert_rank=4, dtype='float32', param_dtype='float32'))
    c.sleep.ks.update(dict(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=8))
    c.sampling.prompt_buckets = (64, 128, 256, 384)
    c.sampling.gen_buckets = (8, 16)
    c.mesh.shape.update(dict(data=-1, fsdp=1, tensor=1))
  c.lock()
  return c
