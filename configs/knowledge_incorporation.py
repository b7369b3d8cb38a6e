"""Single-passage knowledge incorporation (experiments/knowledge_incorporation.py): configs/sleep.py plus `ki`, the
passage source. The default (`ki.source='generated'`, invented passages) is configs/sleep.py's run unchanged.

  python -m experiments.knowledge_incorporation --workdir=runs/ki --seeds=0,1,2 --passages=1
  # SQuAD v1.1 with SEAL's protocol (docs/paper_scale/squad.md; prepare the data first, offline at run time):
  python -m experiments.knowledge_incorporation --workdir=runs/ki_squad --config.ki.source=squad \\
      --config.ki.data_dir=/data/tfds --seeds=0 --passages=200
"""
import ml_collections as mlc

from configs import sleep


def ki_fields() -> mlc.ConfigDict:
  """`config.ki`: where the passages come from (also used by configs/multi_passage_ki.py)."""
  return mlc.ConfigDict(dict(
      # 'generated': invented passages (sleep_jax/data/knowledge.py); 'squad': SQuAD v1.1 grouped by passage, the
      # split 'test' = SQuAD validation (SEAL's evaluation set), 'validation' (tuning) = SQuAD train
      # (sleep_jax/data/squad.py, which documents SEAL's protocol and how ours differs).
      source='generated',
      data_dir=''))       # TFDS data dir holding squad/v1.1/3.0.0; '' = $SLEEP_JAX_DATA_DIR or ~/.cache/sleep_jax/tfds


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = sleep.get_config(arg)
  c.unlock()
  c.ki = ki_fields()
  c.lock()
  return c
