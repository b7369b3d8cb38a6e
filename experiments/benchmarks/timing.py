"""The one timing rule of the benchmarks: a warm-up call (compilation), then the median of `reps` timed calls."""
import time


def median_time(fn, reps: int) -> tuple[float, list[float]]:
  """(median seconds, every timed repetition) of `fn()` after one untimed warm-up call."""
  fn()
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return sorted(ts)[len(ts) // 2], ts
