"""The model-file parsers under hypothesis at CI size (experiments/benchmarks/fuzz.py runs 10,000 per parser):
every input loads or fails with a ValueError / FileNotFoundError naming the file; anything else fails the test."""
from experiments.benchmarks import fuzz

N = 250


def test_gguf_and_safetensors_parsers_survive_fuzzing(tmp_path):
  res = fuzz.run(N, workdir=str(tmp_path), seed=0)
  for parser, counts in res.items():
    n = sum(v for k, v in counts.items() if k != 'seconds')
    assert n >= 0.9 * N, (parser, counts)
    assert any('clear error' in k for k in counts), (parser, counts)   # the mutations do reach the checks
