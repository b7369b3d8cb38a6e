"""The controlled world's model: a ~1.1M-parameter Llama trained from scratch on invented people (data/world.py),
gated on held-out question templates (open-book reading, closed-book recall, extraction; world.GATES).

  python -m experiments.main --config=configs/world.py --workdir=runs/world            # ~20-30 min on 2 cores
  python -m experiments.main --config=configs/world.py:smoke --workdir=/tmp/world_smoke  # seconds, no gates
The trained model is exported (Hugging Face layout: config.json, model.safetensors, tokenizer files, gates.json) to
`world.export`, default ~/.cache/sleep_jax/worlds/<hash of the config>; a second run with the same config finds
it there and only re-checks its gates. The default world model ships in the repository (sleep_jax/data/world_model,
made by this command with --config.world.export=sleep_jax/data/world_model), so sleeping on the world never waits
for pretraining. Re-running the same command resumes from the newest checkpoint in --workdir.
"""
import ml_collections as mlc

from configs import base


def world_fields() -> mlc.ConfigDict:
  """`config.world`: the world (people, splits; data/world.WorldSpec), its pretraining mix (world.Mix), the export."""
  return mlc.ConfigDict(dict(
      seed=0, n_pretrain=200, n_validation=300, n_test=300,   # 300 new people per split: up to 256 in one sleep
      # documents: bios 0.3 / closed-book QA 0.2 / open-book 0.5; answer tokens weighted 3x (the feasibility run:
      # open-book 0.3 with answers 2x never learned to read the context)
      mix=mlc.ConfigDict(dict(bio=0.3, closed_qa=0.2, open_book=0.5, qa_per_doc=3, answer_weight=3.0)),
      export='',               # where the trained model goes; '' = ~/.cache/sleep_jax/worlds/<config hash>
      gates=True))             # False: report the gates without failing (smoke runs, studies)


def world_model() -> mlc.ConfigDict:
  """4 layers, d=128, 8 heads, SwiGLU 512, tied embeddings over the world's 444-word vocabulary (448 rows)."""
  m = base.smollm2_model()
  m.update(dict(source='random', vocab_size=448, d_model=128, n_layers=4, n_heads=8, n_kv_heads=8, head_dim=16,
                d_ff=512, rope_base=10000.0, norm_eps=1e-5, tie_embeddings=True, max_seq_len=512))
  return m


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = base.base_config()
  c.job = 'world'
  c.model = world_model()
  c.world = world_fields()
  c.data = mlc.ConfigDict(dict(source='world', batch_size=16, seq_len=256))
  c.train = mlc.ConfigDict(dict(steps=2000))
  c.optim.update(dict(lr=2e-3, warmup_steps=150, decay_steps=2000, end_lr_frac=0.05, weight_decay=0.0))
  c.checkpoint.update(dict(every=250, keep=2))
  c.log_every = 50
  if arg == 'smoke':   # the job's whole path in seconds; far too short to pass the gates, so they only report
    c.model.update(dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=64))
    c.world.update(dict(n_pretrain=20, n_validation=4, n_test=4, gates=False))
    c.data.update(dict(batch_size=8, seq_len=128))
    c.train.steps = 6
    c.optim.update(dict(warmup_steps=2, decay_steps=6))
    c.checkpoint.every = 3
    c.log_every = 2
  elif arg:
    raise ValueError(f"configs/world.py has variants '' and 'smoke', got {arg!r}")
  c.lock()
  return c
