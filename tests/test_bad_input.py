"""Bad input fails fast with a message naming the problem, and leaves nothing behind: config overrides (in process
and on the command line), model files whose lengths or vocabulary do not add up."""
import os
import struct
import subprocess
import sys

import pytest

from configs import sleep as sleep_config
from experiments.benchmarks import fuzz
from sleep_jax import _env, jobs, runtime
from sleep_jax.io import load_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bad(**overrides):
  c = sleep_config.get_config('smoke')
  with c.unlocked():
    for k, v in overrides.items():
      *path, last = k.split('.')
      node = c
      for p in path:
        node = node[p]
      node[last] = v
  return c


@pytest.mark.parametrize('overrides,match', [
    ({'wake.base_period': -1}, r'wake.base_period=-1 must be >= 1'),
    ({'wake.level_of_layer': (0, 1), 'wake.periods': (2, 3), 'wake.lrs': (0.1, 0.1)}, r'C\^\(0\)=2 must divide C\^\(1\)=3'),
    ({'wake.level_of_layer': (0, 1), 'wake.periods': (1, -4), 'wake.lrs': (0.1, 0.1)}, r'wake.periods\[1\]=-4'),
    ({'checkpoint.every': 0}, r'checkpoint.every=0 must be >= 1'),
    ({'cycle.docs_per_step': 0}, r'cycle.docs_per_step=0 must be an integer >= 1'),
    ({'cycle.docs_per_step': 4, 'cycle.docs_per_sleep': 6}, r'cycle.docs_per_sleep=6 must be a multiple of '
                                                             r'cycle.docs_per_step=4'),
    ({'sleep.ks.sample_batch': 0}, r'sleep.ks.sample_batch=0 must be positive'),
    ({'sampling.top_p': 0.0}, r'sampling.top_p=0.0 must be in \(0, 1\]'),
    ({'sampling.gen_buckets': (16, 8)}, r'sampling.gen_buckets=\(16, 8\) must be increasing'),
    ({'guard.nonfinite': 'ignore'}, r"guard.nonfinite='ignore' is not one of"),
    ({'sleep.dream.top_k': 9}, r'top_k \+ n_random = 10 must be in \[1, n_dreams=4\]'),
    ({'sleep.receiver_level': 5}, r'sleep.receiver_level=5 must name a CMS level'),
    ({'model.source': 'gguf', 'model.path': '/nonexistent/m.gguf'}, r"model.path='/nonexistent/m.gguf' is not a file"),
    ({'model.n_heads': 3}, r'model.n_heads=3 must be a multiple of model.n_kv_heads=2'),
    # the level -> level protocol: layouts the cycle cannot run
    ({'cycle.protocol': True}, r'level 0 does not learn while awake \(wake.lrs\[0\]=0.0'),
    ({'cycle.protocol': True, 'wake.lr': 0.1, 'wake.n_levels': 1}, r'cycle.protocol=True needs >= 2 CMS levels'),
    ({'cycle.protocol': True, 'wake.level_of_layer': (0, 1), 'wake.periods': (1, 0), 'wake.lrs': (0.1, 0.1)},
     r'wake.periods\[1\]=0: a frozen level'),
    ({'cycle.protocol': True, 'wake.level_of_layer': (0, 2, 2), 'wake.periods': (1, 2, 4),
      'wake.lrs': (.1,) * 3}, r'CMS level 1 holding no layer'),
    ({'cycle.protocol': True, 'wake.lr': 0.1, 'wake.factor': 10, 'cycle.consolidations_per_period': 4},
     r'cycle.consolidations_per_period=4 must divide C\^\(1\)/C\^\(0\) = 10/1 = 10'),
    ({'cycle.protocol': True, 'wake.lr': 0.1, 'cycle.consolidations_per_period': 0},
     r'cycle.consolidations_per_period=0 must be an integer >= 1'),
    ({'cycle.consolidations_per_period': 2}, r'consolidations_per_period=2 has no effect without cycle.protocol'),
])
def test_out_of_range_config_values_are_named(overrides, match):
  with pytest.raises(ValueError, match=match):
    jobs.validate(_bad(**overrides))


@pytest.mark.parametrize('overrides', [
    {'wake.lr': 0.1, 'wake.factor': 10, 'cycle.consolidations_per_period': 10},   # the paper's 1k/10k -> 10
    {'wake.lr': 0.1, 'wake.base_period': 2, 'wake.factor': 4, 'cycle.consolidations_per_period': 2},
    {'wake.level_of_layer': (0, 1), 'wake.periods': (2, 6), 'wake.lrs': (0.1, 0.0),   # the receiver may not learn
     'cycle.consolidations_per_period': 3},
])
def test_protocol_layouts_the_cycle_runs_validate(overrides):
  jobs.validate(_bad(**{'cycle.protocol': True, **overrides}))


def test_every_shipped_config_validates():
  import importlib
  jobs_ = ('sleep', 'lm', 'wake', 'chat')   # experiments.main jobs; the rest are the experiments' own programs
  for name in jobs_ + ('few_shot_arc', 'continual_languages', 'class_incremental', 'long_horizon_memory',
                       'multi_passage_ki'):
    mod = importlib.import_module(f'configs.{name}')
    for variant in ('', 'smoke'):
      (jobs.validate if name in jobs_ else runtime.validate)(mod.get_config(variant))


def test_experiments_check_their_config_before_anything_else():
  from experiments import common
  with pytest.raises(SystemExit, match=r'error: bad config:\n  - checkpoint.every=0 must be >= 1'):
    common.checked(_bad(**{'checkpoint.every': 0}))


def test_all_problems_are_listed_at_once():
  with pytest.raises(ValueError) as e:
    jobs.validate(_bad(**{'checkpoint.every': 0, 'sampling.temperature': -1.0}))
  assert 'checkpoint.every=0' in str(e.value) and 'sampling.temperature=-1.0' in str(e.value)


def test_cli_refuses_bad_values_before_writing_anything(tmp_path, flag='--config.wake.base_period=0',
                                                        match='wake.base_period=0 must be >= 1'):
  # (unknown keys and wrong types are refused by absl/ml_collections while parsing, before main() runs)
  _cli_refuses(tmp_path, flag, match)


def test_cli_refuses_a_bad_documents_file_before_writing_anything(tmp_path):
  """Issue 17: a bad `knowledge.documents` file used to be found by the job, after the workdir and its
  config.json were written; `jobs.validate` reads it first (no model needed)."""
  bad = tmp_path / 'docs.jsonl'
  bad.write_text('{"id": "a", "text": "Fine passage."}\n{"id": "b", "text": \n')
  _cli_refuses(tmp_path, f'--config.knowledge.documents={bad}', f'{bad}:2: invalid JSON')
  with pytest.raises(ValueError, match=r"knowledge.documents='/nonexistent/d.jsonl': documents file not found"):
    jobs.validate(_bad(**{'knowledge.documents': '/nonexistent/d.jsonl'}))


def _cli_refuses(tmp_path, flag, match):
  workdir = tmp_path / 'run'
  p = subprocess.run([sys.executable, '-m', 'experiments.main', '--config=configs/sleep.py:smoke',
                      f'--workdir={workdir}', flag], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                     capture_output=True, text=True, timeout=300)
  assert p.returncode != 0 and match in p.stderr, p.stderr[-2000:]
  assert 'Traceback' not in p.stderr, p.stderr[-2000:]
  assert not workdir.exists()
  # TF was imported on the way (clu): its load-time absl/CUDA lines are kept out (sleep_jax/_env.py)
  assert 'cuInit' not in p.stderr and 'absl::InitializeLog' not in p.stderr and 'I0000' not in p.stderr, p.stderr


def test_tf_import_noise_is_dropped_and_the_rest_kept():
  """The filter of sleep_jax/_env.py drops exactly the known TF/CUDA load-time lines (as TF 2.21 prints them)."""
  noise = ('WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n'
           'I0000 00:00:1796512643.216622    9600 port.cc:153] oneDNN custom operations are on. You may see ...\n'
           'I0000 00:00:1796512643.217612    9600 cudart_stub.cc:31] Could not find cuda drivers on your machine, '
           'GPU will not be used.\n'
           'E0000 00:00:1796512645.284333    9600 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: '
           'Failed call to cuInit: UNKNOWN ERROR (303)\n')
  real = ('E0000 00:00:1796512645.284333    9600 op_kernel.cc:1857] OP_REQUIRES failed: out of memory\n'
          'ImportError: something real\n')
  assert _env.filter_noise(noise + real + noise) == real


def _u64_at(data: bytes, at: int, v: int) -> bytes:
  return data[:at] + struct.pack('<Q', v) + data[at + 8:]


def test_gguf_lengths_are_bounded_by_the_file_size(tmp_path):
  good = fuzz.write_gguf_seed(tmp_path / 'seed.gguf')
  cases = {'count.gguf': (_u64_at(good, 16, 2**64 - 1), 'metadata entries / .* tensors cannot fit'),
           'strlen.gguf': (_u64_at(good, 24, 2**40), 'metadata key #0 length 1099511627776 exceeds the bytes left')}
  for name, (data, match) in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=f'{name}: corrupt or truncated GGUF: .*{match}'):
      load_gguf(tmp_path / name)


def test_tokenizer_that_does_not_belong_to_the_weights(tmp_path, monkeypatch):
  from sleep_jax import build as build_lib
  from sleep_jax.io import Tokenizer
  path = tmp_path / 'm.gguf'
  fuzz.write_gguf_seed(path)
  real = Tokenizer.from_gguf

  class Big:
    vocab_size = 9
  monkeypatch.setattr(Tokenizer, 'from_gguf', classmethod(lambda cls, p: Big()))
  c = _bad(**{'model.source': 'gguf', 'model.path': str(path), 'model.n_experts': 0, 'model.expert_rank': 0})
  with pytest.raises(ValueError, match="has 9 tokens but the model's vocabulary is 8"):
    build_lib.build(c)
  assert real(path).vocab_size == 8
