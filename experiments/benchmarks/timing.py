"""The one timing rule of the benchmarks: a warm-up call (compilation), then the median of `reps` timed calls."""
import statistics
import time


def median_time(fn, reps: int) -> tuple[float, list[float]]:
  """(median seconds, every timed repetition) of `fn()` after one untimed warm-up call."""
  fn()
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts), ts


def matmul_peak_gflops(reps: int = 3, n: int = 2048) -> float:
  """This machine's float32 matrix-multiply rate in JAX (an n x n @ n x n product), GFLOP/s."""
  import jax
  a = jax.random.normal(jax.random.key(0), (n, n))
  mm = jax.jit(lambda a: a @ a)
  t, _ = median_time(lambda: jax.block_until_ready(mm(a)), max(reps, 3))
  return 2 * n ** 3 / t / 1e9


def compiled_flops(jitted, *args) -> float:
  """XLA's FLOP count of one call of `jitted` on `args` (cost analysis of the compiled program)."""
  ca = jitted.lower(*args).compile().cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  return float(ca.get('flops', float('nan')))
