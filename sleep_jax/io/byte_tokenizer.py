"""A byte-level tokenizer for tiny random-initialised models (tests, smoke configs).

Ids 0..3 are <pad>, <bos>, <eos>, <sep>; bytes follow at 4..259. The chat template is a plain
'role: text' transcript ending each turn with <sep>, so chat code paths run without the real model.
"""
from __future__ import annotations

SPECIALS = ('<pad>', '<bos>', '<eos>', '<sep>')
OFFSET = len(SPECIALS)


class ByteTokenizer:
  pad_id, bos_id, eos_id, sep_id = 0, 1, 2, 3
  vocab_size = 256 + OFFSET

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return (self.eos_id, self.sep_id)

  def encode(self, text: str, add_special: bool = False) -> list[int]:
    ids = [b + OFFSET for b in text.encode('utf-8')]
    return [self.bos_id] + ids if add_special else ids

  def decode(self, ids, skip_special: bool = True) -> str:
    out = bytearray()
    for i in ids:
      i = int(i)
      if i >= OFFSET:
        out.extend([i - OFFSET])
      elif not skip_special:
        out.extend(SPECIALS[i].encode())
    return out.decode('utf-8', errors='replace')

  def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
    text = ''.join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ('assistant: ' if add_generation_prompt else '')

  def chat_tokens(self, messages, add_generation_prompt: bool = True) -> list[int]:
    ids: list[int] = [self.bos_id]
    for m in messages:
      ids += self.encode(f"{m['role']}: {m['content']}") + [self.sep_id]
    return ids + (self.encode('assistant: ') if add_generation_prompt else [])
