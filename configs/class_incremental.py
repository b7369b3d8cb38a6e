"""Class-incremental intent classification (CLINC150 / Banking77 style), experiments/class_incremental.py.

Starts from configs/sleep.py (model, Knowledge Seeding) and adds `config.ci`: the stages, the prompt, the
evaluation sample and each method's knobs. Variants: '' = SmolLM2-135M-Instruct (the documented full setting),
'smoke' = the tiny random model with the byte tokenizer (seconds; numbers meaningless).
"""
import ml_collections as mlc

from configs import sleep


def get_config(arg: str = '') -> mlc.ConfigDict:
  if arg not in ('', 'smoke'):
    raise ValueError(f"configs/class_incremental.py has variants '' and 'smoke', got {arg!r}")
  c = sleep.get_config(arg)
  c.unlock()
  c.job = 'class_incremental'
  c.model.n_experts = 3            # one new expert per receiver layer per stage: >= ci.n_stages
  c.sleep.ks.update(dict(
      steps=3,                      # KS updates per stage (per sleep); sized for 2 CPU cores, not tuned
      prompts_per_step=2,           # student prompts (utterances) per update
      group_size=2,                 # G student completions per prompt
      max_new_tokens=10,            # a label name is <= 8 SmolLM2 tokens + EOS
      gamma=0.0))                   # no judge: LTI reward = Levenshtein to the teacher's label only
  c.ci = mlc.ConfigDict(dict(
      # intents.stages(seed, data_stages): 70 classes -> 23 stages of 3-4 classes. Small stages because every
      # scored candidate costs a forward pass on a 2-core CPU (CLINC150 uses ~10-15 per stage).
      data_stages=23,
      n_stages=3,                   # the first n_stages stages are learned, one after the other
      # The classification prompt (chat user turn); the answer is the label name. Classification = argmax over
      # the label names of the classes seen so far of sum log p(label tokens | prompt).
      instruction='Classify the intent of the message. Answer with the intent label.\nMessage: {utterance}',
      eval_per_class=2,             # utterances per class drawn (seeded) from the evaluated split
      score_chunk=32,               # candidate rows per scoring call (prefix-cached scorer)
      # (1) in-context learning: k labelled train examples per seen class in the prompt, k as large as fits.
      icl_max_k=4, icl_max_tokens=900,
      # (2) fine-tuning: config.finetune below. (3) EWC: + lambda/2 sum F (theta - theta_prev)^2, Fisher from n
      # examples of the previous stages' data at the previous stage's weights. lambda (finetune.ewc_lambda) is
      # chosen on 'validation' among ewc_lambdas (see the module docstring).
      ewc_lambdas=(1e4, 1e7), fisher_examples=4,
      select_eval_per_class=4,      # --ewc_select: validation utterances per class (stages 1-2)
      # (4) sleep: each stage's document = the stage's class descriptions + doc_per_class "utterance -> label"
      # lines per class; KS student prompts are other train utterances of the stage in the classification
      # prompt (teacher: the same prompt after the document, i.e. in-context learning distilled into a new
      # expert). docs_per_stage documents with disjoint example lines, sleep_prompts student prompts in all.
      doc_per_class=2, docs_per_stage=2, sleep_prompts=6))
  # (2) fine-tuning (AdamW) on each stage's train utterances -> label names, chained over stages. All weights
  # of the top 6 of 30 layers (the backward pass stops there: ~4x cheaper than all weights on CPU); a priori.
  # ewc_lambda: the EWC row's lambda unless --ewc_select / --ewc_lambda_from choose it.
  c.finetune.update(dict(steps=4, lr=1e-4, batch_size=4, seq_len=96, trainable=r'layers_(2[4-9])/', ewc_lambda=1e6))
  if arg == 'smoke':
    c.sleep.ks.update(dict(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=8))
    c.ci.update(dict(n_stages=2, eval_per_class=1, score_chunk=8, icl_max_k=1, icl_max_tokens=1000,
                     ewc_lambdas=(1.0, 100.0), fisher_examples=2, select_eval_per_class=1, doc_per_class=1, docs_per_stage=1, sleep_prompts=2))
    c.finetune.update(dict(steps=2, batch_size=4, seq_len=256, trainable='.*', ewc_lambda=1.0))
    c.model.n_experts = 2
    c.model.max_seq_len = 2048
    c.sampling.prompt_buckets = (64, 128, 256, 512, 768, 1024)   # bytes: a document is ~300-700 tokens
    c.ci.data_stages = 35          # stages of 2 classes keep the byte-level documents short
  else:
    c.sampling.prompt_buckets = (32, 64, 128, 256, 320, 384, 512, 768, 1024)
  c.lock()
  return c
