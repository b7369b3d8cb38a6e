"""Table 5 of the paper (PAPER sec. 5) mapped onto this repo's config fields, shared by the paper configs.

  Table 5                  field(s) here
  lr 5e-6                  sleep.ks.lr, sleep.dream.lr (M-step), finetune.lr
  batch 32                 sleep.ks.prompts_per_step x sleep.ks.group_size = 8 x 4 student rows per KS update
  100 sleep steps          sleep.ks.steps
  experts 5 x rank 64      model.n_experts, model.expert_rank
  LoRA rank 64             Dreaming's isolated copies train a new expert of model.expert_rank (= 64), not a LoRA
  LoRA alpha 128           no field: experts carry no alpha/rank multiplier (B starts small, A at 1/sqrt(D));
                           the paper's x2 scale is a learning-rate factor here
"""
import ml_collections as mlc

LR = 5e-6
BATCH = 32
PROMPTS_PER_STEP, GROUP_SIZE = 8, 4     # 8 x 4 = BATCH
SLEEP_STEPS = 100
N_EXPERTS, EXPERT_RANK = 5, 64


def apply(c: mlc.ConfigDict) -> None:
  """Table 5 onto a configs/sleep.py-shaped config (unlocked), plus the memory settings a paper-size model needs."""
  assert PROMPTS_PER_STEP * GROUP_SIZE == BATCH
  c.model.update(dict(n_experts=N_EXPERTS, expert_rank=EXPERT_RANK,
                      dtype='bfloat16', param_dtype='bfloat16',   # bf16 weights: 7B fp32 would not fit 8 x 16 GiB
                      remat=True))                                # keep block inputs only in the backward pass
  c.sleep.ks.update(dict(steps=SLEEP_STEPS, prompts_per_step=PROMPTS_PER_STEP, group_size=GROUP_SIZE, lr=LR))
  c.sleep.dream.update(dict(lr=LR))   # inner_lr (the isolated copies' SFT) has no Table-5 value: kept
  c.finetune.lr = LR
  # Weights FSDP-sharded over every device (data=1): 'embed' -> fsdp shards each matrix's model dim, batch rows go
  # over data x fsdp. A tensor axis > 1 (e.g. --config.mesh.shape.fsdp=4 --config.mesh.shape.tensor=2) splits
  # heads / kv_heads / mlp / vocab as well (configs/base.py's rules name both axes).
  c.mesh.shape.update(dict(data=1, fsdp=-1, tensor=1))
