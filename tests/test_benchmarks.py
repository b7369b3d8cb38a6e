"""The performance suite's CI-size checks: compilation counts that must not grow with run length, and the suite's
report on the tiny model (no timings are asserted: machines are shared; the ratios are in docs/performance.md's table)."""
import pytest

from experiments.benchmarks import suite
from tests import helpers


def test_compilations_do_not_grow_with_steps(tmp_path):
  """A wake stream of 3 vs 12 steps and a sleep of 2 KS steps + 2 dream rounds vs 4 + 3 compile the same programs:
  everything compiles during warm-up, nothing after (caches cleared before each run).

  The counter counts compile requests: JAX's backend-compile event wraps the persistent-cache lookup, so a request
  served from that cache counts like one XLA compiles. With a persistent cache each long run still counts every
  program it asks for from scratch, per function, but loads the executables the short run compiled instead of
  compiling them again: a long run that needs a program the short one did not, or asks for one again at a later
  step, still counts more. (Were a JAX version to count only cache misses, the long runs would count less and
  this test would fail, not pass.)"""
  with helpers.compilation_cache(tmp_path / 'jax_cache'):
    r = suite.compile_section(wake_steps=(3, 12), sleep_steps=((2, 2), (4, 3)), two_sleeps=False)
  (w_short, w_long), (s_short, s_long) = [[r[k] for k in r if k.startswith(p)] for p in ('wake,', 'wake + sleep')]
  for short, long in ((w_short, w_long), (s_short, s_long)):
    assert short['n'] > 0
    assert long['per_fn'].keys() == short['per_fn'].keys()
    assert {k: v[0] for k, v in long['per_fn'].items()} == {k: v[0] for k, v in short['per_fn'].items()}
  assert s_short['sleeps'] == s_long['sleeps'] == 1


def test_suite_reports_the_tiny_model(tmp_path):
  rec = suite.model_sections('tiny', {'train'}, reps=1, skip_hf=True)
  full, expert = rec['train_full'], rec['train_expert']
  assert full['ours_s'] > 0 and expert['ours_s'] > 0
  # skipping the frozen base's gradients removes real work from the compiled step
  assert expert['xla_flops'] < 0.8 * expert['xla_flops_all_grads']
  # the model-FLOP formula agrees with XLA's count of the compiled step (which adds softmax, norms, AdamW)
  assert 0.8 < full['xla_flops'] / full['model_flops'] < 1.3
  text = suite.table({'models': [rec], 'limits': {'jax_matmul_gflops': 100.0, 'jax_gemv_b1_gb_s': 1.0,
                                                   'jax_gemv_b8_gb_s': 1.0}})
  assert 'expert-only train step tokens/s' in text and '% of matmul peak' in text


def test_unknown_model_is_a_clear_error():
  with pytest.raises(ValueError, match="not one of 'tiny', 'smollm2'"):
    suite.load_model('gpt5')


def test_gpu_section_code_path_runs_on_a_tiny_model():
  """The GPU rows (bfloat16 1B-class MFU) run only where a GPU is; their code path is checked here on CPU, tiny."""
  tiny = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128)
  g = suite.gpu_section(1, model=tiny, B=8, L=16, peak_n=128)   # B: the batch splits over the 8 test devices
  assert g['model']['dtype'] == 'bfloat16' and g['step_s'] > 0 and g['mfu'] > 0


def test_gpu_row_names_the_data_sheet_peak_of_the_device():
  assert suite.spec_peak_tflops('NVIDIA H100 80GB HBM3') == 989.4
  assert suite.spec_peak_tflops('NVIDIA H100 PCIe') == 756.0
  assert suite.spec_peak_tflops('TPU v5 lite') == 197.0 and suite.spec_peak_tflops('cpu') is None
  g = {'device': 'NVIDIA H100 80GB HBM3', 'params_b': 1.2, 'batch': [8, 2048], 'step_s': 0.5, 'tflops': 400.0,
       'bf16_matmul_peak_tflops': 700.0, 'mfu': 400 / 700, 'spec_bf16_tflops': 989.4, 'mfu_spec': 400 / 989.4}
  assert 'MFU 40% of the data-sheet dense bf16 peak 989 TFLOP/s' in suite.table({'gpu': g})
