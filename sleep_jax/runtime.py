"""The composition root: the only code that turns `config.*` into typed phase configs and the objects that run
them (mesh/sharding and model via `build`, sampler, judge, seeder, dreamer, probe, guard, wake config and step).

The cycle, the jobs, every experiment and every benchmark take their objects from a `Runtime`; the phases
(phases/*.py) see typed configs (`WakeConfig`, `KSConfig`, `DreamConfig`) and never the whole config.

  rt = Runtime(config)                     # builds the model (or pass built=) and the cheap objects
  seeder = rt.seeder()                     # Knowledge Seeding with config.sleep.ks (cached, compiled once)
  seeder = rt.seeder(rt.ks_config(alpha=1.0, steps=4))   # an ablation: its own compiled update
  dreamer = rt.dreamer(rt.dream_config(random_expert=False))
  nll = rt.probe()(params, cms)            # retention probe on the validation essays

Objects that compile are cached per typed config, so rows and seeds of an experiment share one compiled update.
Every seeder and dreamer is built the same way: with the mesh's batch multiple and batch sharding (exactly the
same numbers as without on one device) and with `config.guard`, so a non-finite value stops or is skipped as
the config says in the cycle and in every experiment alike.
"""
from __future__ import annotations

import dataclasses
import functools
import math

from sleep_jax import build as build_lib
from sleep_jax import evals, sharding
from sleep_jax.data import long_horizon
from sleep_jax.guard import NonFiniteGuard
from sleep_jax.phases import consolidate as ks
from sleep_jax.phases import dream as dream_lib
from sleep_jax.phases import wake as wake_lib
from sleep_jax.rewards import Judge
from sleep_jax.sampling import Sampler


# ---------------------------------------------------------------------------------------------------
# Typed configs from config blocks


def wake_config(config, cfg) -> wake_lib.WakeConfig:
  """WakeConfig from `config.wake`; empty level_of_layer/periods/lrs mean `default_levels` over all layers
  (`cfg`, the ModelConfig, gives the number of layers; it may be None when level_of_layer is explicit)."""
  w = config.wake
  level_of_layer, periods, lrs = tuple(w.level_of_layer), tuple(w.periods), tuple(w.lrs)
  if not level_of_layer:
    level_of_layer, periods = wake_lib.default_levels(cfg.n_layers, w.n_levels, w.base_period, w.factor)
    lrs = lrs or (w.lr,) * len(periods)
  # The cycle's level -> level protocol holds boundary updates back for its sleeps: its levels keep accumulators
  # even at period 1. Without it the wake step is exactly as before (no accumulator for period-1 levels).
  protocol = 'cycle' in config and config.cycle.get('protocol', False)
  holdable = tuple(l for l, c in enumerate(periods) if c > 0) if protocol else ()
  return wake_lib.WakeConfig(level_of_layer=level_of_layer, periods=periods, lrs=lrs, optimizer=w.optimizer,
                             train_other=w.train_other, other_lr=w.other_lr, holdable=holdable)


def ks_config(config, **overrides) -> ks.KSConfig:
  """`config.sleep.ks` (with `overrides`, e.g. an ablation's alpha) as a KSConfig."""
  return ks.KSConfig.from_config({**dict(config.sleep.ks), **overrides})


def dream_config(config, **overrides) -> dream_lib.DreamConfig:
  """`config.sleep.dream` (with `overrides`) as a DreamConfig; a config without a dream block does not dream."""
  if 'dream' not in config.sleep:
    return dream_lib.DreamConfig(enabled=False, **overrides)
  return dream_lib.DreamConfig.from_config({**dict(config.sleep.dream), **overrides})


def make_sampler(b: build_lib.Built, config, eos_ids=None) -> Sampler:
  """The project's one Sampler over `b`'s model and mesh (`eos_ids` replaces the tokenizer's stop tokens, e.g.
  [-1] in benchmarks so every completion has max_new_tokens tokens)."""
  s = config.sampling
  return Sampler(b.model, b.cfg, pad_id=b.tokenizer.pad_id,
                 eos_ids=b.tokenizer.stop_ids if eos_ids is None else tuple(eos_ids),
                 prompt_buckets=s.prompt_buckets, gen_buckets=s.gen_buckets, mesh=b.mesh,
                 param_shardings=b.shardings)


def probe_texts() -> list[str]:
  """The retention probe's text: validation essays (what the model knew before a sleep)."""
  return [t for _, t in long_horizon.split_essays('validation')]


def batch_shards(b: build_lib.Built) -> int:
  """How many devices a batch's leading dimension is split over (rows are padded to a multiple of it)."""
  return max(1, math.prod(b.mesh.shape[a] for a in ('data', 'fsdp') if a in b.mesh.shape))


# ---------------------------------------------------------------------------------------------------
# Validation: every problem at once, before anything is built or written


def check_docs_per_step(config) -> int:
  """`cycle.docs_per_step` (default 1), checked against `cycle.docs_per_sleep`: a sleep comes after a whole wake
  step, so the buffer must fill at a step's end."""
  k, n = config.cycle.get('docs_per_step', 1), config.cycle.docs_per_sleep
  if not isinstance(k, int) or k < 1:
    raise ValueError(f'cycle.docs_per_step={k!r} must be an integer >= 1 (documents read per wake step)')
  if n % k:
    raise ValueError(f'cycle.docs_per_sleep={n} must be a multiple of cycle.docs_per_step={k}: a sleep starts '
                     f'after a whole wake step; set docs_per_sleep to {max(k, n // k * k)} or docs_per_step to a '
                     f'divisor of {n}')
  return k


def validate(config, problems: list[str] | None = None) -> None:
  """Check every value a run reads for range and consistency before anything is built or written; raises one
  ValueError listing each problem with its config key (unknown keys and wrong types are refused earlier, by
  the locked ml_collections config). `problems`: found by the caller already (e.g. an unknown job)."""
  problems = list(problems or [])

  def need(ok, msg):
    if not ok:
      problems.append(msg)

  def run(fn):   # the validators the jobs themselves construct
    try:
      fn()
    except (ValueError, TypeError) as e:
      problems.append(str(e))

  c = config
  need(c.seed >= 0, f'seed={c.seed} must be >= 0')
  need(c.log_every >= 1, f'log_every={c.log_every} must be >= 1')
  build_lib.check_source(c.model, problems)
  if c.model.source == 'random':
    run(lambda: build_lib.model_config_from(c.model))
  ck = c.checkpoint
  need(ck.every >= 1, f'checkpoint.every={ck.every} must be >= 1')
  need(ck.keep is None or ck.keep >= 1, f'checkpoint.keep={ck.keep} must be >= 1 (or None: keep all)')
  need(ck.sleep_every >= 0, f'checkpoint.sleep_every={ck.sleep_every} must be >= 0 (0: no saves inside a sleep)')
  s = c.sampling
  need(s.temperature >= 0, f'sampling.temperature={s.temperature} must be >= 0 (0: greedy)')
  need(s.top_k >= 0, f'sampling.top_k={s.top_k} must be >= 0 (0: off)')
  need(0 < s.top_p <= 1, f'sampling.top_p={s.top_p} must be in (0, 1]')
  need(s.max_new_tokens >= 1, f'sampling.max_new_tokens={s.max_new_tokens} must be >= 1')
  for k in ('prompt_buckets', 'gen_buckets'):
    b = tuple(s[k])
    need(b and all(x >= 1 for x in b) and list(b) == sorted(set(b)),
         f'sampling.{k}={b} must be increasing positive lengths')
  run(lambda: NonFiniteGuard.from_config(c))
  if 'train' in c:
    need(c.train.steps >= 0, f'train.steps={c.train.steps} must be >= 0')
  if 'data' in c:
    need(c.data.batch_size >= 1 and c.data.seq_len >= 1,
         f'data.batch_size={c.data.batch_size} and data.seq_len={c.data.seq_len} must be >= 1')
  if 'wake' in c:
    w = c.wake
    if tuple(w.level_of_layer):
      run(lambda: wake_config(c, None))
    else:
      need(w.n_levels >= 1, f'wake.n_levels={w.n_levels} must be >= 1')
      need(w.base_period >= 1 and w.factor >= 2,
           f'wake.base_period={w.base_period} must be >= 1 and wake.factor={w.factor} >= 2 (periods C^(l) = '
           'base_period * factor^l, each dividing the next)')
      need(w.lr >= 0 and all(x >= 0 for x in w.lrs), f'wake.lr={w.lr} and wake.lrs={tuple(w.lrs)} must be >= 0')
  if 'cycle' in c:
    need(c.cycle.docs_per_sleep >= 1, f'cycle.docs_per_sleep={c.cycle.docs_per_sleep} must be >= 1')
    need(c.cycle.seq_len >= 1, f'cycle.seq_len={c.cycle.seq_len} must be >= 1')
    if c.cycle.docs_per_sleep >= 1:
      run(lambda: check_docs_per_step(c))
    problems += protocol_problems(c)
  if 'sleep' in c:
    run(lambda: ks_config(c))
    run(lambda: dream_config(c))
    need(c.sleep.max_probe_regression >= 0,
         f'sleep.max_probe_regression={c.sleep.max_probe_regression} must be >= 0')
    if 'when_full' in c.sleep:
      need(c.sleep.when_full in ('grow', 'error'),
           f"sleep.when_full={c.sleep.when_full!r} must be 'grow' (grow a full expert pool) or 'error'")
      need(c.sleep.grow_by >= 0, f'sleep.grow_by={c.sleep.grow_by} must be >= 0 (0: double the pool)')
    if 'wake' in c and not tuple(c.wake.level_of_layer):
      need(0 <= c.sleep.receiver_level < c.wake.n_levels,
           f'sleep.receiver_level={c.sleep.receiver_level} must name a CMS level (0..{c.wake.n_levels - 1})')
  if problems:
    raise ValueError('bad config:\n  - ' + '\n  - '.join(dict.fromkeys(problems)))


def protocol_problems(c) -> list[str]:
  """What makes `cycle.protocol` / `cycle.consolidations_per_period` unrunnable for the wake levels (the
  schedule is cycle.protocol_schedule): each protocol pair is (level l-1 -> level l) for l = 1..n-1."""
  cyc = c.cycle
  p = cyc.get('consolidations_per_period', 1)
  if not isinstance(p, int) or p < 1:
    return [f'cycle.consolidations_per_period={p!r} must be an integer >= 1']
  if not cyc.get('protocol', False):
    return [] if p == 1 else [f'cycle.consolidations_per_period={p} has no effect without cycle.protocol=True; '
                              'set it to 1 or turn the protocol on']
  if 'wake' not in c:
    return ['cycle.protocol=True consolidates CMS levels into each other, but the config has no wake block']
  w = c.wake
  if tuple(w.level_of_layer):
    periods, lrs = tuple(w.periods), tuple(w.lrs)
    if len(lrs) != len(periods):
      return []   # reported by the wake config's own check
  else:
    periods = tuple(w.base_period * w.factor ** l for l in range(w.n_levels))
    lrs = tuple(w.lrs) or (w.lr,) * len(periods)
  if len(periods) < 2:
    return [f'cycle.protocol=True needs >= 2 CMS levels (one consolidates into the next), but wake has '
            f'{len(periods)}; set wake.n_levels (or wake.periods) or cycle.protocol=False']
  out = []
  for l, cl in enumerate(periods):
    if cl == 0:
      out.append(f'cycle.protocol=True with wake.periods[{l}]=0: a frozen level can neither send its wake update '
                 'nor receive a consolidation; drop the level or set cycle.protocol=False')
    elif tuple(w.level_of_layer) and l not in tuple(w.level_of_layer):
      out.append(f'cycle.protocol=True with CMS level {l} holding no layer (wake.level_of_layer='
                 f'{tuple(w.level_of_layer)}): it has nothing to send or receive')
  for r in range(1, len(periods)):
    s = r - 1
    if not periods[s] or not periods[r]:
      continue
    if not lrs[s] > 0:
      out.append(f'cycle.protocol=True consolidates level {s} into level {r}, but level {s} does not learn while '
                 f'awake (wake.lrs[{s}]={lrs[s]}, or wake.lr): its update is what is consolidated; set it > 0 '
                 'or cycle.protocol=False')
    if periods[r] % periods[s]:
      continue   # reported by the wake config's own check (chunk sizes nest)
    ratio = periods[r] // periods[s]
    if ratio % p:
      out.append(f'cycle.consolidations_per_period={p} must divide C^({r})/C^({s}) = {periods[r]}/{periods[s]} = '
                 f'{ratio} (wake.periods {periods}): each consolidation of level {s} into {r} falls on a '
                 f'boundary of level {s}, whose held update it consolidates')
  return out


# ---------------------------------------------------------------------------------------------------
# The runtime


class Runtime:
  """Everything a run builds from its config, built once per process and shared."""

  def __init__(self, config, built: build_lib.Built | None = None, *, eos_ids=None,
               guard: NonFiniteGuard | None = None):
    self.config, self._eos_ids = config, eos_ids
    self.b = built if built is not None else build_lib.build(config)
    self.tokenizer = self.b.tokenizer
    self.guard = guard if guard is not None else NonFiniteGuard.from_config(config)   # shared by a regrown one
    self.sampler = make_sampler(self.b, config, eos_ids)
    self.batch_sharding = sharding.batch_sharding(self.b.mesh, self.b.rules)
    self.n_shards = batch_shards(self.b)
    self.wcfg = wake_config(config, self.b.cfg) if 'wake' in config else None
    self._seeders, self._dreamers, self._probes = {}, {}, {}

  def regrown(self, built: build_lib.Built) -> 'Runtime':
    """This runtime for a grown model (`built`, e.g. `build.with_model`): every object that depends on the model's
    shapes (module, sampler, judge, seeders, dreamers, probes, wake config) built anew by this same constructor;
    the guard is shared, so its skip counts run on."""
    return Runtime(self.config, built, eos_ids=self._eos_ids, guard=self.guard)

  # ---- typed configs ------------------------------------------------------------------------
  def ks_config(self, **overrides) -> ks.KSConfig:
    return ks_config(self.config, **overrides)

  def dream_config(self, **overrides) -> dream_lib.DreamConfig:
    return dream_config(self.config, **overrides)

  def layers(self, level: int | None = None) -> tuple[int, ...]:
    """The layers of CMS level `level` (default: config.sleep.receiver_level): where new experts go."""
    return ks.layers_of_level(self.wcfg, self.config.sleep.receiver_level if level is None else level)

  # ---- objects --------------------------------------------------------------------------------
  @functools.cached_property
  def judge(self) -> Judge:
    """The semantic-reward judge (PAPER's default: the frozen pre-sleep model); built on first use."""
    return Judge(self.b.model, self.tokenizer, prompt_buckets=self.config.sampling.prompt_buckets)

  def seeder(self, kcfg: ks.KSConfig | None = None) -> ks.Seeder:
    """A Knowledge Seeder for `kcfg` (default: config.sleep.ks). Seeders that differ only in `steps` share one
    compiled update (the update does not depend on how many are run)."""
    kcfg = kcfg or self.ks_config()
    key = dataclasses.replace(kcfg, steps=0)
    if key not in self._seeders:
      self._seeders[key] = ks.Seeder(self.b.model, kcfg, self.tokenizer, self.sampler,
                                     judge=self.judge if kcfg.needs_judge else None,
                                     batch_multiple=self.n_shards, batch_sharding=self.batch_sharding,
                                     guard=self.guard)
    return self._seeders[key].with_steps(kcfg.steps)

  def dreamer(self, dcfg: dream_lib.DreamConfig | None = None) -> dream_lib.Dreamer:
    """A Dreamer for `dcfg` (default: config.sleep.dream, which must be enabled), cached per DreamConfig."""
    dcfg = dcfg or self.dream_config()
    if dcfg not in self._dreamers:
      self._dreamers[dcfg] = dream_lib.Dreamer(self.b.model, dcfg, self.tokenizer, self.sampler,
                                               batch_multiple=self.n_shards, batch_sharding=self.batch_sharding,
                                               guard=self.guard)
    return self._dreamers[dcfg]

  def probe(self, texts: tuple[str, ...] | None = None) -> evals.Probe:
    """The retention probe (NLL on `texts`, default the validation essays; `config.sleep.probe_*` sizes)."""
    texts = tuple(probe_texts() if texts is None else texts)
    if texts not in self._probes:
      c = self.config.sleep
      self._probes[texts] = evals.Probe(self.b.model, self.tokenizer, list(texts), seq_len=c.probe_seq_len,
                                        n_rows=max(c.probe_rows, self.n_shards))
    return self._probes[texts]

  def wake_step(self, state_shardings):
    """The jitted CMS wake step (PAPER Eq. 2) for `config.wake` over `state_shardings`."""
    return wake_lib.make_wake_step(self.b.model, self.wcfg, state_shardings, self.batch_sharding,
                                   skip_nonfinite=self.guard.skip)
