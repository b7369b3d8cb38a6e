"""Chat with the embedded default model (SmolLM2-135M-Instruct): greedy answers and tokens/s.

  python -m experiments.main --config=configs/chat.py --workdir=runs/chat
  python -m experiments.main --config=configs/chat.py:smoke --workdir=/tmp/chat_smoke
  Override anything: --config.sampling.temperature=0.7 --config.sampling.top_p=0.9
"""
import ml_collections as mlc

from configs import base


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = base.base_config()
  c.job = 'chat'
  c.chat = mlc.ConfigDict(dict(
      system='',
      prompts=('What is the capital of France?',
               'Write one sentence about why sleep matters for memory.',
               'List three prime numbers.',
               'Translate "good morning" into French.')))
  c.sampling.max_new_tokens = 48
  if arg == 'smoke':
    c.model = base.tiny_model()
    c.sampling.max_new_tokens = 8
  elif arg:
    raise ValueError(f"configs/chat.py has variants '' and 'smoke', got {arg!r}")
  c.lock()
  return c
