"""Checkpoint and tokenizer I/O: GGUF import, Hugging Face safetensors import/export, the embedded SmolLM2."""
from sleep_jax.io.gguf import default_model_path, load_gguf
from sleep_jax.io.hf import load_hf, save_hf
from sleep_jax.io.tokenizer import Tokenizer


def load_default():
  """(ModelConfig, float32 numpy params, Tokenizer) of the embedded SmolLM2-135M-Instruct, reading the file once."""
  from sleep_jax.io import gguf as g
  path = default_model_path()
  reader = g.open_gguf(path)
  cfg = g.config_from_reader(reader, path)
  return cfg, g.params_from_reader(reader, cfg, path), Tokenizer.from_reader(reader, path)


__all__ = ['load_gguf', 'default_model_path', 'Tokenizer', 'load_hf', 'save_hf', 'load_default']
