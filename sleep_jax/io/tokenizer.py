"""Byte-level BPE tokenizer built from GGUF metadata with the `tokenizers` library, plus the chat template.

The pre-tokenizer follows `tokenizer.ggml.pre`: for SmolLM2 ('smollm', same as llama.cpp's starcoder family)
it is Digits(individual_digits=True) then ByteLevel(add_prefix_space=False, use_regex=True), exactly the
Hugging Face SmolLM2 tokenizer.json. `save`/`load` write tokenizer.json + tokenizer_config.json (the chat
template and the bos/eos/pad tokens) so a safetensors export carries a complete tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types
# tokenizer.ggml.pre values whose split regex is "\p{N}" then the GPT-2 regex (llama.cpp llama-vocab.cpp).
_DIGITS_THEN_GPT2 = ('smollm', 'starcoder', 'refact', 'codeshell')
_GPT2 = ('gpt2', 'default')


def _pre_tokenizer(pre: str, where):
  from tokenizers import pre_tokenizers as pt
  byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _DIGITS_THEN_GPT2:
    return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
  if pre in _GPT2:
    return byte_level
  raise ValueError(f'{where}: unsupported tokenizer.ggml.pre={pre!r}; supported: {_DIGITS_THEN_GPT2 + _GPT2}')


class Tokenizer:
  """Wraps a `tokenizers.Tokenizer` with the ids and chat template a chat model needs.

  A tokenizer without a chat template belongs to a *base* (pretrained, not instruction-tuned) model; its prompts
  are rendered plainly (`apply_chat_template`). `enable_thinking` is passed to the template as the variable of that
  name (Qwen3's templates open a <think> block unless it is false); `build` sets it from config.model.
  """

  def __init__(self, tk, *, bos: str | None, eos: str, pad: str | None = None, chat_template: str | None = None,
               add_bos: bool = False, add_eos: bool = False, enable_thinking: bool = False):
    self.tk = tk
    self.enable_thinking = bool(enable_thinking)
    self.bos, self.eos, self.pad = bos, eos, pad
    self.chat_template = chat_template
    self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
    for what, tok in (('bos', bos), ('eos', eos), ('pad', pad)):
      if tok is not None and tk.token_to_id(tok) is None:
        raise ValueError(f'{what} token {tok!r} is not in the vocabulary')
    self._template = None

  # ---- construction --------------------------------------------------------------------------
  @classmethod
  def from_gguf(cls, path) -> 'Tokenizer':
    from sleep_jax.io.gguf import named_errors, open_gguf
    reader = open_gguf(path)
    with named_errors(path, 'GGUF tokenizer metadata'):
      return cls.from_reader(reader, path)

  @classmethod
  def from_reader(cls, reader, path='<gguf>') -> 'Tokenizer':
    """From an open `gguf.GGUFReader` (so a caller loading weights too reads the file once)."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models

    def get(key, default=...):
      f = reader.fields.get(key)
      if f is None:
        if default is ...:
          raise ValueError(f'{path}: GGUF metadata key {key!r} (needed for the tokenizer) is missing')
        return default
      return f.contents()

    if (kind := get('tokenizer.ggml.model')) != 'gpt2':
      raise ValueError(f'{path}: tokenizer.ggml.model={kind!r} is not supported (only byte-level BPE, "gpt2")')
    tokens, types = get('tokenizer.ggml.tokens'), get('tokenizer.ggml.token_type', None)
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
      raise ValueError(f'{path}: tokenizer.ggml.tokens has duplicate entries')
    merges = []
    for m in get('tokenizer.ggml.merges'):
      pair = m.split(' ')
      if len(pair) != 2:
        raise ValueError(f'{path}: malformed BPE merge {m!r} in tokenizer.ggml.merges')
      merges.append(tuple(pair))
    try:   # `tokenizers` raises a bare Exception for inconsistent vocab/merges
      tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    except Exception as e:  # noqa: BLE001
      raise ValueError(f'{path}: tokenizer.ggml.tokens / merges do not form a BPE tokenizer: {e}') from e
    tk.pre_tokenizer = _pre_tokenizer(get('tokenizer.ggml.pre', 'default'), path)
    tk.decoder = decoders.ByteLevel()
    if types is not None:
      tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                             for i, t in enumerate(types) if t == CONTROL])
      tk.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                     for i, t in enumerate(types) if t == USER_DEFINED])
    tok = lambda key: None if (i := get(key, None)) is None else tokens[int(i)]
    eos = tok('tokenizer.ggml.eos_token_id')
    if eos is None:
      raise ValueError(f'{path}: GGUF metadata key tokenizer.ggml.eos_token_id is missing')
    return cls(tk, bos=tok('tokenizer.ggml.bos_token_id'), eos=eos, pad=tok('tokenizer.ggml.padding_token_id'),
               chat_template=get('tokenizer.chat_template', None),
               add_bos=get('tokenizer.ggml.add_bos_token', False), add_eos=get('tokenizer.ggml.add_eos_token', False))

  def save(self, folder) -> None:
    """Write tokenizer.json and tokenizer_config.json (Hugging Face layout) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    self.tk.save(str(folder / 'tokenizer.json'))
    conf = {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': self.bos, 'eos_token': self.eos,
            'pad_token': self.pad, 'add_bos_token': self.add_bos, 'add_eos_token': self.add_eos,
            'chat_template': self.chat_template}
    (folder / 'tokenizer_config.json').write_text(json.dumps(conf, indent=2, ensure_ascii=False))

  @classmethod
  def load(cls, folder) -> 'Tokenizer':
    from tokenizers import Tokenizer as HFTokenizer
    folder = Path(folder)
    tj, tc = folder / 'tokenizer.json', folder / 'tokenizer_config.json'
    for f in (tj, tc):
      if not f.is_file():
        raise FileNotFoundError(f'tokenizer file {f} is missing')
    try:
      tk = HFTokenizer.from_file(str(tj))
      conf = json.loads(tc.read_text())
    except Exception as e:
      raise ValueError(f'{folder}: cannot read tokenizer files: {e}') from e
    name = lambda t: t.get('content') if isinstance(t, dict) else t  # HF may store AddedToken dicts
    if name(conf.get('eos_token')) is None:
      raise ValueError(f'{tc}: eos_token is missing')
    bos = name(conf.get('bos_token'))
    add_bos = conf.get('add_bos_token')
    if add_bos is None:   # Llama-3 writes no add_bos_token: its tokenizer.json post-processor prepends the bos
      bos_id = None if bos is None else tk.token_to_id(bos)
      add_bos = bos_id is not None and tk.encode('a', add_special_tokens=True).ids[:1] == [bos_id]
    template = conf.get('chat_template')
    if template is None and (folder / 'chat_template.jinja').is_file():   # transformers >= 4.50 saves it apart
      template = (folder / 'chat_template.jinja').read_text()
    if isinstance(template, list):   # named templates [{'name': 'default', 'template': ...}, ...]
      named = {t.get('name'): t.get('template') for t in template if isinstance(t, dict)}
      if 'default' not in named:
        raise ValueError(f'{tc}: chat_template is a list without a "default" entry (have {sorted(named)})')
      template = named['default']
    return cls(tk, bos=bos, eos=name(conf['eos_token']), pad=name(conf.get('pad_token')),
               chat_template=template, add_bos=add_bos, add_eos=conf.get('add_eos_token', False))

  # ---- ids -----------------------------------------------------------------------------------
  def _id(self, tok):
    return None if tok is None else self.tk.token_to_id(tok)

  @property
  def eos_id(self) -> int:
    return self._id(self.eos)

  @property
  def bos_id(self) -> int | None:
    return self._id(self.bos)

  @property
  def pad_id(self) -> int:
    """The metadata's padding token; the eos token when the model names none."""
    return self._id(self.pad) if self.pad is not None else self.eos_id

  @property
  def vocab_size(self) -> int:
    return self.tk.get_vocab_size(with_added_tokens=True)

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Ids that end a generation: eos, plus <|im_end|> and <|endoftext|> when the vocabulary has them."""
    ids = [self.eos_id] + [self.tk.token_to_id(t) for t in ('<|im_end|>', '<|endoftext|>')]
    return tuple(dict.fromkeys(i for i in ids if i is not None))

  # ---- text ----------------------------------------------------------------------------------
  def encode(self, text: str, add_special: bool = False) -> list[int]:
    """Token ids; special tokens written in `text` are recognised. `add_special` adds bos/eos if the model asks."""
    ids = self.tk.encode(text, add_special_tokens=False).ids
    if add_special:
      if self.add_bos and self.bos_id is not None:
        ids = [self.bos_id] + ids
      if self.add_eos:
        ids = ids + [self.eos_id]
    return ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  @property
  def is_base(self) -> bool:
    """No chat template: a base model, prompted with plain text."""
    return self.chat_template is None

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render the model's own chat template (sandboxed jinja2, Hugging Face's settings).

    A base model (no template) gets the messages' contents concatenated exactly as written, whatever their roles:
    a prompt is the user's text as-is and an assistant turn continues it directly, which is how a pretrained model
    is prompted (few-shot text ending where the answer starts). `add_generation_prompt` adds nothing then; the bos
    token is added by `chat_tokens` when the tokenizer asks for one (`add_bos`).
    """
    if self.chat_template is None:
      for m in messages:
        if not isinstance(m.get('content'), str):
          raise ValueError(f'base-model prompt: message content must be a string, got {m.get("content")!r}')
      return ''.join(m['content'] for m in messages)
    if self._template is None:
      from jinja2.sandbox import ImmutableSandboxedEnvironment

      def raise_exception(msg):
        raise ValueError(f'chat template: {msg}')

      env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
      env.filters['tojson'] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
      env.globals['raise_exception'] = raise_exception
      self._template = env.from_string(self.chat_template)
    return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                 bos_token=self.bos or '', eos_token=self.eos, enable_thinking=self.enable_thinking)

  def chat_tokens(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the rendered messages. A chat template writes its own bos; a base model's prompt gets the bos
    per `add_bos` (as Hugging Face's tokenizer would add it)."""
    text = self.apply_chat_template(messages, add_generation_prompt)
    if self.is_base:
      return ([self.bos_id] if self.add_bos and self.bos_id is not None else []) + self.encode(text)
    return self.encode(text)

  def __repr__(self):
    return f'Tokenizer(vocab_size={self.vocab_size}, bos={self.bos!r}, eos={self.eos!r}, pad={self.pad!r})'
