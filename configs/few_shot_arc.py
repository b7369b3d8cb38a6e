"""Few-shot ARC (PAPER sec. 5, SEAL protocol): ICL, test-time training, SEAL-style self-edits and sleep (Dreaming).

Starts from configs/sleep.py (SmolLM2-135M-Instruct, one new low-rank expert per receiver layer, Dreaming
hyper-parameters in `sleep.dream`) and adds `arc` (the protocol's sizes). Variants: '' = the documented full
setting (SmolLM2, held-out test tasks), 'smoke' = the tiny random model with the byte tokenizer (seconds).

  python -m experiments.few_shot_arc --config=configs/few_shot_arc.py --workdir=runs/few_shot_arc --seeds=0
  python -m experiments.few_shot_arc --config=configs/few_shot_arc.py:smoke --workdir=/tmp/arc_smoke --seeds=0,1
"""
import ml_collections as mlc

from configs import sleep


def get_config(arg: str = '') -> mlc.ConfigDict:
  if arg not in ('', 'smoke'):
    raise ValueError(f"configs/few_shot_arc.py has variants '' and 'smoke', got {arg!r}")
  c = sleep.get_config(arg)
  c.unlock()
  c.job = 'few_shot_arc'
  c.arc = mlc.ConfigDict(dict(
      split='test',             # held-out tasks: 'test' for the final numbers, 'validation' for any tuning;
                                # 'seal': SEAL's split (data/arc_seal_split.json): its 8 evaluation tasks are the
                                # held-out pool (heldout_pool unused) and n_train of its 11 training tasks (0 = all)
      n_train=2,                # training tasks for the dream generator (the smallest of the 'train' split)
      heldout_pool=10,          # the smallest `heldout_pool` tasks of `split` whose answer fits answer_tokens ...
      n_heldout=1,              # ... of which each seed draws `n_heldout` (seeded): 3 seeds, 3 tasks. Sized to the
                                # machine: a held-out task costs ~8 min of a shared CPU core (15 answers, 10 dreams)
      dreams_per_task=5,        # held-out stage (SEAL protocol): self-edits per held-out task, each tested alone
      ttt_steps=3,              # test-time training: full-batch steps on the leave-one-out demonstrations
      heldout_random_expert=False,   # held-out dreams with the random extra expert (False: SEAL and sleep
                                     # differ only in the generator: untrained vs ReST-EM-trained)
      answer_slack=4,           # answer budget = tokens of the target grid + slack (the grid is given, not guessed)
      max_answer_tokens=64))    # tasks whose target needs more are left out of the pool
  # Dreaming: the same DreamConfig for the ReST-EM sleep on training tasks and the held-out stage (n_dreams is
  # overridden there by arc.dreams_per_task). Sizes a priori for 2 CPU cores, not tuned on test.
  c.sleep.dream.update(dict(
      n_dreams=5, top_k=2, n_random=1,   # 3 of 5 dreams tested per training task and round
      rounds=1,                          # ReST-EM rounds over the training tasks (~3 min per task and round)
      max_new_tokens=64,                 # a new 3x3..6x6 input/output pair with its 'Input:'/'Output:' labels
      inner_steps=3, inner_lr=1e-2,      # each isolated copy (training rounds and held-out self-edits alike)
      mstep_steps=2, lr=5e-3, probe_rows=4))
  # Few shapes, few compilations (each costs minutes on a shared 2-core machine): every ARC prompt (answers,
  # dreams' generator prompts, leave-one-out probes; <= ~350 SmolLM2 tokens for the 10 smallest held-out tasks)
  # pads to 384, the dreams' memory-format prompts to 64; answers and dreams share one generation bucket.
  c.sampling.prompt_buckets = (64, 384)
  c.sampling.gen_buckets = (64,)
  if arg == 'smoke':
    c.arc.update(dict(n_train=1, heldout_pool=2, n_heldout=1, dreams_per_task=2, ttt_steps=2, max_answer_tokens=16))
    c.sleep.dream.update(dict(n_dreams=2, top_k=1, n_random=0, rounds=1, max_new_tokens=16, inner_steps=1,
                              mstep_steps=1, probe_rows=2))
    c.sampling.gen_buckets = (16,)
    c.sampling.prompt_buckets = (64, 480)   # byte tokens: an ARC prompt is ~300-470 bytes
  c.lock()
  return c
