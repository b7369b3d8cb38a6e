"""Long-horizon memory (experiments/long_horizon_memory.py): MK-NIAH streams longer than the context window.

The model reads a stream window by window; only the last window is in context when the questions come. Rows:
sliding-window ICL, continual fine-tuning on each dropped window, and sleep with 1..3 CMS levels (each level a
contiguous group of layers that consolidates, every 2^l dropped windows, the windows since its last sleep).
Everything below was chosen a priori for cost on a 2-core CPU (nothing tuned on the test split).

  ''       SmolLM2-135M-Instruct, the documented full run (3 seeds ~ 25 min wall on 2 CPU slots)
  'smoke'  tiny random model with the byte tokenizer (seconds; for tests and notebooks)
"""
import ml_collections as mlc

from configs import sleep as sleep_config


def get_config(arg: str = '') -> mlc.ConfigDict:
  if arg not in ('', 'smoke'):
    raise ValueError(f"configs/long_horizon_memory.py has variants '' and 'smoke', got {arg!r}")
  c = sleep_config.get_config(arg)
  c.unlock()
  c.job = 'long_horizon_memory'
  c.lhm = mlc.ConfigDict(dict(
      kind='mk_niah',            # 'mk_niah': one needle per depth in each stream, every key is asked (MK-NIAH);
                                 # 'niah': one stream per depth, one needle each (costs len(depths) x the sleeps)
      split='test',              # held-out essays, keys and values; 'validation' for tuning
      window=128,                # context window in tokens (SmolLM2 tokenizer); the stream is cut into
                                 # `multiplier` windows at the sentence ends nearest to k/multiplier of its tokens
      multipliers=(2, 3),        # stream lengths in windows: 2 (1 dropped window) and 3 (2 dropped). Cost-bound (the
                                 # 2 shared CPU slots): with periods 1, 2, 4 windows the slowest level of sleep_L3
                                 # needs >= 4 dropped windows, so at these lengths it never sleeps; sleep_L3 then
                                 # differs from sleep_L2 by its thinner fast level (10 vs 15 layers). m = 5 would
                                 # cost ~2.5x the sleeps.
      depths=(0.1, 0.5, 0.9),    # needle depths (fraction of the stream before the needle)
      streams=1,                 # streams per (seed, multiplier); the seed picks the stream (data index = seed)
      levels=(1, 2, 3),          # the sleep rows: number of CMS levels
      level_factor=2,            # level l sleeps every level_factor^l dropped windows (C^(l) divides C^(l+1))
      answer_tokens=32,          # greedy answer length
      # Knowledge Seeding prompts for a window (PAPER sec. 3 default: prefixes of the wake context, plus a
      # task-style instruction that does not name any key): the teacher reads the window, the student does not.
      templates=('List the facts, names and numbers stated in the text.', 'Complete the sentence: {prefix}'),
      prefix_prompts=1,          # sentence-prefix prompts per window (2 prompts per window = 2 KS steps' worth)
  ))
  # Continual fine-tuning (row 'finetune'): each dropped window, as one plain-text row, gets `steps` AdamW updates
  # of all weights (as many as one sleep's KS steps); lr a priori: 3e-5 of the KI experiment x ~3 for so few steps;
  # seq_len: a window is ~window tokens + a sentence.
  c.finetune.update(dict(steps=2, lr=1e-4, batch_size=1, seq_len=192))
  # Expert pool: level 0 sleeps once per dropped window, so it needs max(multipliers) - 1 slots.
  c.model.n_experts = max(c.lhm.multipliers) - 1
  # Knowledge Seeding per sleep, sized for cost (measured with SmolLM2 on the loaded 2-core machine: one sleep
  # of 2 updates ~60 s + ~65 s to compile the update for each new layer group): 2 updates of 1 prompt x
  # (1 teacher + 2 student) rows, 16 new tokens; gamma = 0 drops the judge's r_sem (docs/design.md, Decisions: the frozen 135M
  # judge scored identical and unrelated pairs alike) and its extra forward pass.
  c.sleep.ks.update(dict(steps=2, prompts_per_step=1, group_size=2, max_new_tokens=16, gamma=0.0))
  c.sleep.dream.enabled = False  # consolidation only: Dreaming would multiply the cost per sleep
  c.sampling.prompt_buckets = (32, 64, 128, 256, 512, 1024)   # full_context reads the whole stream (~4 x 128)
  if arg == 'smoke':
    c.lhm.update(dict(window=160, multipliers=(2, 3), depths=(0.1, 0.9), answer_tokens=8, prefix_prompts=1))
    c.finetune.update(dict(steps=1, seq_len=96))
    c.model.n_experts = max(c.lhm.multipliers) - 1
    c.model.update(dict(max_seq_len=1056, n_layers=3))   # 3 layers: one per level of sleep_L3
    c.sleep.ks.steps = 1
    c.sampling.prompt_buckets = (64, 128, 256, 512, 1024)
  c.lock()
  return c
