"""Parameter-tree surgery that grows a Llama model while preserving its function exactly.

Ops are pure functions `op(cfg, params, rng, **args) -> (new_cfg, new_params)`:

  widen_mlp(d_ff)                    new gate/up columns random, new w_down rows zero.
  add_heads(n_heads, n_kv_heads)     old query head h (kv group k = h // G, slot g = h % G) moves to slot
                                     k * G' + g, so it keeps its kv head; new wq heads and new kv groups random,
                                     new wo rows zero.
  widen_model(d_model)               new residual dims stay exactly 0: new embedding columns and the new output
                                     columns of wo / w_down / expert_b are zero; matrices reading the residual
                                     (wq/wk/wv, w_gate/w_up, router, expert_a, untied lm_head) get random rows.
                                     RMSNorm averages over D' = D + zeros, so eps -> eps * D / D' (config) and
                                     every norm scale is multiplied by sqrt(D / D'):
                                     rsqrt(mean_D'(x^2) + eps D/D') sqrt(D/D') = rsqrt(mean_D(x^2) + eps).
  add_layers(at=[...] | n=...)       identity blocks (wo, w_down, expert_b zero; the rest initialised normally)
                                     at the given indices of the grown model; 'layers_i' keys renumbered.

Every op is first a `Plan`, computed from the config alone: the new config, per named dim where each old index
lands, and per new layer which old layer it copies. The same plan grows the parameters, the optimizer state
(`grow_opt_state`) and per-layer side trees such as the CMS 'cms' collection (`grow_tree_like`), and all guards
run in the planner, before any array is touched. Equal sizes (a no-op request) are refused, so a lineage only
records real growth. Changing head_dim is not supported (RoPE frequencies and the 1/sqrt(E) logit scale depend
on it, so no surgery preserves the function).

Lineage: `grow` appends JSON-able {'op', 'args'} records (they go into checkpoint meta); `apply_lineage` replays
them. A record may carry note keys beside them (the cycle's growth notes 'from', 'to', 'layers', 'at_doc',
'sleep'): replay ignores them. Op i of a lineage draws its new random weights from fold_in(rng, i), so growing step by step with `grow`
and one base key, and replaying the lineage with that key, give identical trees.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from sleep_jax import sharding
from sleep_jax.build import abstract_params
from sleep_jax.models import cms as cms_lib
from sleep_jax.models.llama import ModelConfig, Transformer

Params = Any
Path = tuple[str, ...]

# Named dims: V vocab, D d_model, H query heads, K kv heads, E head dim, F mlp hidden, S experts, R expert rank.
_TOP_DIMS: dict[str, tuple[str, ...]] = {'embed': ('V', 'D'), 'lm_head': ('D', 'V')}
_BLOCK_DIMS: dict[tuple[str, str], tuple[str, ...]] = {
    ('attn', 'wq'): ('D', 'H', 'E'),
    ('attn', 'wk'): ('D', 'K', 'E'),
    ('attn', 'wv'): ('D', 'K', 'E'),
    ('attn', 'wo'): ('H', 'E', 'D'),
    ('mlp', 'w_gate'): ('D', 'F'),
    ('mlp', 'w_up'): ('D', 'F'),
    ('mlp', 'w_down'): ('F', 'D'),
    ('mlp', 'router'): ('D', 'S'),
    ('mlp', 'expert_a'): ('S', 'D', 'R'),
    ('mlp', 'expert_b'): ('S', 'R', 'D'),
    # Architecture variants (ModelConfig.qkv_bias / o_bias / mlp_bias; Qwen2): present only when the config says.
    ('attn', 'bq'): ('H', 'E'),
    ('attn', 'bk'): ('K', 'E'),
    ('attn', 'bv'): ('K', 'E'),
    ('attn', 'bo'): ('D',),
    ('mlp', 'b_gate'): ('F',),
    ('mlp', 'b_up'): ('F',),
    ('mlp', 'b_down'): ('D',),
}
_EXPERT_LEAVES = frozenset({'router', 'expert_a', 'expert_b'})
_BIAS_FLAG = {'bq': 'qkv_bias', 'bk': 'qkv_bias', 'bv': 'qkv_bias', 'bo': 'o_bias',
              'b_gate': 'mlp_bias', 'b_up': 'mlp_bias', 'b_down': 'mlp_bias'}
_HEAD_NORMS = ('q_norm', 'k_norm')   # Qwen3's per-head RMSNorm over head_dim: its scale is ('E',), not ('D',)
# Leaves that write into the residual stream: new entries start at zero, so new residual dims, new heads and new
# layers add exactly nothing at growth (their partners on the reading side are random, so gradients flow).
# Biases start at zero too (a new head's or a new residual dim's bias adds nothing).
_ZERO_INIT = frozenset({'embed', 'wo', 'w_down', 'expert_b'}) | frozenset(_BIAS_FLAG)
_LAYER_RE = re.compile(r'^layers_(\d+)$')


def dim_sizes(cfg: ModelConfig) -> dict[str, int]:
  return {'V': cfg.vocab_size, 'D': cfg.d_model, 'H': cfg.n_heads, 'K': cfg.n_kv_heads, 'E': cfg.head_dim,
          'F': cfg.d_ff, 'S': cfg.n_experts, 'R': cfg.expert_rank}


def leaf_dims(path: Path) -> tuple[str, ...] | None:
  """Named dims of a parameter, or of an optimizer slot shaped like one, matched on the path's tail."""
  if not path:
    return None
  if path[-1] in _TOP_DIMS:
    return _TOP_DIMS[path[-1]]
  if len(path) >= 2 and path[-1] == 'scale' and path[-2] in _HEAD_NORMS:
    return ('E',)
  if len(path) >= 2 and path[-1] == 'scale' and path[-2].endswith('norm'):
    return ('D',)
  return _BLOCK_DIMS.get(tuple(path[-2:])) if len(path) >= 2 else None


def param_dims(cfg: ModelConfig) -> dict[Path, tuple[str, ...]]:
  """Every parameter path the config implies, with its named dims."""
  out: dict[Path, tuple[str, ...]] = {('embed',): ('V', 'D'), ('final_norm', 'scale'): ('D',)}
  if not cfg.tie_embeddings:
    out[('lm_head',)] = ('D', 'V')
  experts = cfg.n_experts > 0
  for i in range(cfg.n_layers):
    layer = f'layers_{i}'
    out[(layer, 'attn_norm', 'scale')] = ('D',)
    out[(layer, 'mlp_norm', 'scale')] = ('D',)
    for (parent, name), dims in _BLOCK_DIMS.items():
      if (experts or name not in _EXPERT_LEAVES) and (name not in _BIAS_FLAG or getattr(cfg, _BIAS_FLAG[name])):
        out[(layer, parent, name)] = dims
    if cfg.qk_norm:
      for n in _HEAD_NORMS:
        out[(layer, 'attn', n, 'scale')] = ('E',)
  return out


def _cfg_str(cfg: ModelConfig) -> str:
  s = dim_sizes(cfg)
  return (f'd_model={s["D"]} n_layers={cfg.n_layers} n_heads={s["H"]} n_kv_heads={s["K"]} head_dim={s["E"]} '
          f'd_ff={s["F"]} vocab_size={s["V"]} tie_embeddings={cfg.tie_embeddings} n_experts={s["S"]} '
          f'expert_rank={s["R"]}')


def _names(paths, limit=6) -> str:
  paths = sorted('/'.join(p) for p in paths)
  return ', '.join(paths[:limit]) + (f' (+{len(paths) - limit} more)' if len(paths) > limit else '')


def validate_params(cfg: ModelConfig, params: Params) -> None:
  """Raise (naming the paths) unless `params` has exactly the leaves and shapes `cfg` implies."""
  flat = traverse_util.flatten_dict(params)
  want = param_dims(cfg)
  sizes = dim_sizes(cfg)
  problems = []
  missing = [p for p in want if p not in flat]
  unknown = [p for p in flat if p not in want]
  if missing:
    problems.append(f'missing {_names(missing)}')
  if unknown:
    problems.append(f'unknown {_names(unknown)}')
  for p, dims in want.items():
    if p in flat:
      shape = tuple(np.shape(flat[p]))
      expect = tuple(sizes[d] for d in dims)
      if shape != expect:
        problems.append(f'{"/".join(p)} has shape {shape}, the config implies {expect} {dims}')
  if problems:
    raise ValueError(f'growth: params do not match the config ({_cfg_str(cfg)}): ' + '; '.join(problems[:8]))


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
  """One growth step, from the config alone: `pos[d][i]` is the new index of old index i along named dim d (dims
  not listed keep their indices); `layer_src[j]` is the old layer that new layer j copies (None = new identity
  block); old RMSNorm scales are multiplied by `norm_factor`."""
  op: str
  args: dict
  old_cfg: ModelConfig
  new_cfg: ModelConfig
  pos: dict[str, np.ndarray]
  layer_src: tuple[int | None, ...]
  norm_factor: float = 1.0

  def record(self) -> dict:
    """The JSON-able lineage entry that replays this step."""
    return {'op': self.op, 'args': dict(self.args)}

  def old_path(self, path: Path) -> Path | None:
    """The path a leaf of the grown tree comes from (layers renumbered); None for a leaf of a new layer."""
    for n, key in enumerate(path):
      m = _LAYER_RE.match(key)
      if m:
        j = int(m.group(1))
        if j >= len(self.layer_src):
          raise ValueError(f'growth {self.op}: {"/".join(path)} names layer {j}, but the grown model has '
                           f'{len(self.layer_src)} layers')
        src = self.layer_src[j]
        return None if src is None else path[:n] + (f'layers_{src}',) + path[n + 1:]
    return path

  def positions(self, path: Path, old_shape, new_shape) -> tuple[np.ndarray, ...]:
    """Per axis, the new index of every old index of this leaf (param-shaped leaves use the plan's dim maps;
    other leaves keep the leading corner)."""
    old_shape, new_shape = tuple(old_shape), tuple(new_shape)
    dims = leaf_dims(path)
    if dims is not None and len(dims) == len(old_shape):
      pos = tuple(self.pos.get(d, np.arange(n)) for d, n in zip(dims, old_shape))
    else:
      pos = tuple(np.arange(n) for n in old_shape)
    if len(old_shape) != len(new_shape) or any(
        len(p) != o or (len(p) and p.max() >= n) for p, o, n in zip(pos, old_shape, new_shape)):
      raise ValueError(f'growth {self.op}: {"/".join(path)} of shape {old_shape} does not map into shape '
                       f'{new_shape} (is the tree from the config {_cfg_str(self.old_cfg)}?)')
    return pos


def _int(op: str, name: str, v) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
    raise ValueError(f'growth {op}: {name} must be an int, got {v!r}')
  return int(v)


def _grown(op: str, name: str, new, old: int) -> int:
  new = _int(op, name, new)
  if new < old:
    raise ValueError(f'growth {op}: {name}={new} is smaller than the current {old}; shrinking cannot preserve '
                     'the function and is not supported')
  if new == old:
    raise ValueError(f'growth {op}: {name}={new} equals the current size; no-op growth is refused (leave the '
                     'step out instead, so the lineage records only real growth)')
  return new


def _no_head_dim_change(op: str, cfg: ModelConfig, head_dim) -> None:
  if head_dim is not None and _int(op, 'head_dim', head_dim) != cfg.head_dim:
    raise ValueError(f'growth {op}: changing head_dim ({cfg.head_dim} -> {head_dim}) is not supported: RoPE '
                     'frequencies and the 1/sqrt(head_dim) logit scale depend on it, so no surgery preserves the '
                     'function; add heads instead')


def _same_layers(cfg: ModelConfig) -> tuple[int, ...]:
  return tuple(range(cfg.n_layers))


def _plan_widen_mlp(cfg: ModelConfig, d_ff: int) -> Plan:
  d_ff = _grown('widen_mlp', 'd_ff', d_ff, cfg.d_ff)
  return Plan('widen_mlp', {'d_ff': d_ff}, cfg, dataclasses.replace(cfg, d_ff=d_ff),
              {'F': np.arange(cfg.d_ff)}, _same_layers(cfg))


def _plan_add_heads(cfg: ModelConfig, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None):
  op = 'add_heads'
  _no_head_dim_change(op, cfg, head_dim)
  H, K = cfg.n_heads, cfg.n_kv_heads
  H2 = _int(op, 'n_heads', n_heads)
  K2 = K if n_kv_heads is None else _int(op, 'n_kv_heads', n_kv_heads)
  for name, new, old in (('n_heads', H2, H), ('n_kv_heads', K2, K)):
    if new < old:
      raise ValueError(f'growth {op}: {name}={new} is smaller than the current {old}; removing heads cannot '
                       'preserve the function and is not supported')
  if (H2, K2) == (H, K):
    raise ValueError(f'growth {op}: n_heads={H2}, n_kv_heads={K2} equal the current sizes; no-op growth is '
                     'refused (leave the step out instead)')
  if K2 <= 0 or H2 % K2:
    raise ValueError(f'growth {op}: n_heads={H2} is not a multiple of n_kv_heads={K2}')
  G, G2 = H // K, H2 // K2
  if G2 < G:
    raise ValueError(f'growth {op}: n_heads={H2}, n_kv_heads={K2} give {G2} query heads per kv head, fewer than '
                     f'the current {G}; every old query head must keep its kv head (h -> h // {G}), so each group '
                     f'needs at least {G} query slots (n_heads >= {G} * n_kv_heads)')
  h = np.arange(H)
  pos = {'H': (h // G) * G2 + h % G}
  if K2 > K:
    pos['K'] = np.arange(K)
  return Plan(op, {'n_heads': H2, 'n_kv_heads': K2}, cfg,
              dataclasses.replace(cfg, n_heads=H2, n_kv_heads=K2), pos, _same_layers(cfg))


def _plan_widen_model(cfg: ModelConfig, d_model: int, head_dim: int | None = None) -> Plan:
  op = 'widen_model'
  _no_head_dim_change(op, cfg, head_dim)
  D = cfg.d_model
  D2 = _grown(op, 'd_model', d_model, D)
  new_cfg = dataclasses.replace(cfg, d_model=D2, norm_eps=cfg.norm_eps * D / D2)
  return Plan(op, {'d_model': D2}, cfg, new_cfg, {'D': np.arange(D)}, _same_layers(cfg),
              norm_factor=math.sqrt(D / D2))


def _plan_add_layers(cfg: ModelConfig, at: Sequence[int] | None = None, n: int | None = None) -> Plan:
  op = 'add_layers'
  L = cfg.n_layers
  if (at is None) == (n is None):
    raise ValueError(f'growth {op}: give exactly one of at=[indices of the new layers in the grown model] or '
                     f'n=<layers appended at the end>, got at={at!r}, n={n!r}')
  if n is not None:
    n = _int(op, 'n', n)
    if n < 0:
      raise ValueError(f'growth {op}: n={n} would remove layers; shrinking is not supported')
    at = list(range(L, L + n))
  if isinstance(at, (str, bytes)) or not isinstance(at, (list, tuple)):
    raise ValueError(f'growth {op}: at must be a list of ints, got {at!r}')
  at = [_int(op, 'at[]', a) for a in at]
  if not at:
    raise ValueError(f'growth {op}: no layers to add; no-op growth is refused (leave the step out instead)')
  L2 = L + len(at)
  if len(set(at)) != len(at) or min(at) < 0 or max(at) >= L2:
    raise ValueError(f'growth {op}: at={at} must be distinct indices in [0, {L2}) of the grown model '
                     f'({L} + {len(at)} layers)')
  at = sorted(at)
  new_set, old = set(at), iter(range(L))
  layer_src = tuple(None if j in new_set else next(old) for j in range(L2))
  return Plan(op, {'at': at}, cfg, dataclasses.replace(cfg, n_layers=L2), {}, layer_src)


def _plan_grow_experts(cfg: ModelConfig, n_experts: int, expert_rank: int | None = None) -> Plan:
  """Enlarge every block's expert pool to `n_experts` (new experts inactive); from no pool, `expert_rank` sets R."""
  op = 'grow_experts'
  n_experts = _grown(op, 'n_experts', n_experts, cfg.n_experts)
  if cfg.n_experts == 0:
    if expert_rank is None:
      raise ValueError(f'growth {op}: the model has no expert pool yet; pass expert_rank to create one')
    rank = _int(op, 'expert_rank', expert_rank)
    if rank < 1:
      raise ValueError(f'growth {op}: expert_rank={rank} must be >= 1')
  else:
    rank = cfg.expert_rank
    if expert_rank is not None and _int(op, 'expert_rank', expert_rank) != rank:
      raise ValueError(f'growth {op}: expert_rank={expert_rank} differs from the pool\'s rank {rank}; changing '
                       'the rank of existing experts is not supported')
  args = {'n_experts': n_experts} if cfg.n_experts else {'n_experts': n_experts, 'expert_rank': rank}
  return Plan(op, args, cfg, dataclasses.replace(cfg, n_experts=n_experts, expert_rank=rank),
              {'S': np.arange(cfg.n_experts)}, _same_layers(cfg))


_PLANNERS: dict[str, Callable[..., Plan]] = {
    'widen_mlp': _plan_widen_mlp, 'add_heads': _plan_add_heads, 'widen_model': _plan_widen_model,
    'add_layers': _plan_add_layers, 'grow_experts': _plan_grow_experts}


def make_plan(op: str, cfg: ModelConfig, **args) -> Plan:
  """Plan one growth step (every guard runs here, before any array is touched)."""
  if not isinstance(op, str) or op not in _PLANNERS:
    raise ValueError(f'growth: unknown op {op!r}; known ops: {sorted(_PLANNERS)}')
  accepted = [p for p in inspect.signature(_PLANNERS[op]).parameters if p != 'cfg']
  unknown = sorted(set(args) - set(accepted))
  if unknown:
    raise ValueError(f'growth {op}: unknown argument(s) {unknown}; {op} takes {accepted}')
  return _PLANNERS[op](cfg, **args)


def compose(a: Plan, b: Plan) -> Plan:
  """The plan of `a` then `b` (positions and layer sources chained), e.g. to grow an old optimizer state
  through a whole lineage at once."""
  if a.new_cfg != b.old_cfg:
    raise ValueError(f'growth: cannot compose {a.op} then {b.op}: {a.op} yields {_cfg_str(a.new_cfg)} but '
                     f'{b.op} starts from {_cfg_str(b.old_cfg)}')
  s_old, s_mid = dim_sizes(a.old_cfg), dim_sizes(a.new_cfg)
  pos = {d: b.pos.get(d, np.arange(s_mid[d]))[a.pos.get(d, np.arange(s_old[d]))] for d in set(a.pos) | set(b.pos)}
  layer_src = tuple(None if s is None else a.layer_src[s] for s in b.layer_src)
  ops = a.args.get('ops', [a.record()]) + b.args.get('ops', [b.record()])
  return Plan('lineage', {'ops': ops}, a.old_cfg, b.new_cfg, pos, layer_src, a.norm_factor * b.norm_factor)


def _scatter(old, fresh, pos: tuple[np.ndarray, ...]):
  """`fresh` with `old` written at the positions `pos` (per axis). Numpy `fresh` (a new array) is written in
  place; for jax a leading corner is one dynamic_update_slice, anything else a scatter."""
  corner = all(np.array_equal(p, np.arange(len(p))) for p in pos)
  if isinstance(fresh, np.ndarray):
    fresh[tuple(slice(0, len(p)) for p in pos) if corner else np.ix_(*pos)] = old
    return fresh
  old = jnp.asarray(old).astype(fresh.dtype)
  if corner:
    return jax.lax.dynamic_update_slice(fresh, old, (0,) * old.ndim)
  return fresh.at[np.ix_(*pos)].set(old)


def _rule(plan: Plan, path: Path, whole_new: bool) -> tuple[str, float]:
  """How a grown leaf's new entries start: ('const', v), ('zeros', 0) or ('normal', std).

  Norm scales: 1 times the widening factor. Residual writers (embed, wo, w_down; expert_b columns of new
  residual dims): 0. Expert-pool leaves follow the CMS module's init (router 0, A ~ N(0, 1/D), a new layer's
  inactive B ~ N(0, 0.02^2/R), so dreaming there still injects novelty); everything else N(0, init_std)."""
  name, c = path[-1], plan.new_cfg
  if name == 'scale':   # q/k norms average over head_dim, which no op changes: their factor is 1
    return 'const', 1.0 if path[-2] in _HEAD_NORMS else plan.norm_factor
  if name in _EXPERT_LEAVES:
    if name == 'expert_a':
      return 'normal', cms_lib.expert_a_std(c.d_model)
    if name == 'expert_b' and (whole_new or plan.op == 'grow_experts'):  # new inactive experts: novelty
      return 'normal', cms_lib.expert_b_std(c.expert_rank)
    return 'zeros', 0.0
  if name in _ZERO_INIT:
    return 'zeros', 0.0
  return 'normal', c.init_std


def _grown_leaves(plan: Plan):
  """(path, new shape, old path or None) of every leaf whose shape or source changes."""
  sizes, old = dim_sizes(plan.new_cfg), param_dims(plan.old_cfg)
  for path, dims in param_dims(plan.new_cfg).items():
    src = plan.old_path(path)
    src = src if src in old else None   # a leaf the old model lacks (a new layer, a new expert pool) is whole-new
    if src is None or any(d in plan.pos for d in dims):
      yield path, tuple(sizes[d] for d in dims), src


def _n_random(plan: Plan) -> int:
  """How many N(0, 1) values the plan's fresh entries take, rounded up (to a power of two, or a multiple of
  2^22) so eager draws reuse a few compiled threefry shapes instead of compiling one per growth."""
  n = sum(math.prod(shape) for path, shape, src in _grown_leaves(plan)
          if _rule(plan, path, src is None)[0] == 'normal')
  return 1 << max(10, (n - 1).bit_length()) if n <= 1 << 22 else -(-n // (1 << 22)) * (1 << 22)


def _apply(plan: Plan, params: Params, flat_noise) -> Params:
  """Run a plan on a parameter tree already validated against `plan.old_cfg`; `flat_noise` holds
  `_n_random(plan)` N(0, 1) values for the fresh entries (one draw: XLA compiles one threefry per draw).
  Jittable; with a numpy `flat_noise` (and numpy params) it runs in numpy on the host."""
  xp = np if isinstance(flat_noise, np.ndarray) else jnp
  flat = traverse_util.flatten_dict(params)
  dtype = flat[('embed',)].dtype
  out = {path: flat[plan.old_path(path)] for path in param_dims(plan.new_cfg)
         if plan.old_path(path) in flat}
  if plan.norm_factor != 1.0:
    for path in out:
      if path[-1] == 'scale' and path[-2] not in _HEAD_NORMS:
        out[path] = (out[path].astype(np.float32) * np.float32(plan.norm_factor)).astype(out[path].dtype)
  offset = 0
  for path, shape, src in _grown_leaves(plan):
    kind, v = _rule(plan, path, src is None)
    if kind == 'normal':
      n = math.prod(shape)
      fresh = (np.float32(v) * flat_noise[offset:offset + n].reshape(shape)).astype(dtype)
      offset += n
    else:
      fresh = xp.full(shape, v, dtype)
    out[path] = fresh if src is None else _scatter(out[path], fresh, plan.positions(path, out[path].shape, shape))
  return traverse_util.unflatten_dict(out)


@functools.lru_cache(maxsize=32)
def _compiled(op: str, cfg: ModelConfig, args_json: str):
  """Jitted `_apply` per (op, config, args), so a replayed lineage reuses its compiled programs."""
  return jax.jit(functools.partial(_apply, make_plan(op, cfg, **json.loads(args_json))))


def _on_host(params: Params) -> bool:
  return all(isinstance(x, (np.ndarray, np.generic)) for x in jax.tree.leaves(params))


def _grow_params(plan: Plan, params: Params, rng, out_shardings=None) -> Params:
  """Run a plan: a host (numpy) tree is grown in numpy (no compile, no device memory; unchanged leaves are
  shared with the input, not copied); a device tree in one jitted program (cached per op, config and args).
  With `out_shardings` the noise is drawn inside the program, so no single device holds it. All three give the
  same numbers for the same rng."""
  n = _n_random(plan)
  if out_shardings is not None:
    fn = lambda p, r: _apply(plan, p, jax.random.normal(r, (n,), jnp.float32))
    return jax.jit(fn, out_shardings=out_shardings)(params, rng)
  noise = jax.random.normal(rng, (n,), jnp.float32)      # eager: one compile per padded length
  if _on_host(params):
    return _apply(plan, params, np.asarray(noise))
  return _compiled(plan.op, plan.old_cfg, json.dumps(plan.args, sort_keys=True))(params, noise)


def _run(op: str, cfg: ModelConfig, params: Params, rng, **args):
  plan = make_plan(op, cfg, **args)
  validate_params(cfg, params)
  return plan.new_cfg, _grow_params(plan, params, rng)


def widen_mlp(cfg: ModelConfig, params: Params, rng, *, d_ff: int):
  """Wider SwiGLU hidden layer: new gate/up columns random, new w_down rows zero."""
  return _run('widen_mlp', cfg, params, rng, d_ff=d_ff)


def add_heads(cfg: ModelConfig, params: Params, rng, *, n_heads: int, n_kv_heads: int | None = None,
              head_dim: int | None = None):
  """More query heads per kv group and/or more kv groups; old heads keep their kv head; new wo rows zero."""
  return _run('add_heads', cfg, params, rng, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim)


def widen_model(cfg: ModelConfig, params: Params, rng, *, d_model: int, head_dim: int | None = None):
  """Wider residual stream (new dims stay 0; norm scales * sqrt(D/D') and eps * D/D' keep RMSNorm exact)."""
  return _run('widen_model', cfg, params, rng, d_model=d_model, head_dim=head_dim)


def add_layers(cfg: ModelConfig, params: Params, rng, *, at: Sequence[int] | None = None, n: int | None = None):
  """Identity blocks at indices `at` of the grown model (or `n` appended at the end); layers renumbered."""
  return _run('add_layers', cfg, params, rng, at=at, n=n)


def grow_experts(cfg: ModelConfig, params: Params, rng, *, n_experts: int, expert_rank: int | None = None):
  """Enlarge every block's expert pool to `n_experts` (the new experts inactive, so the function is unchanged);
  `grow_pool` also grows the 'cms' active masks, optimizer slots and the lineage."""
  return _run('grow_experts', cfg, params, rng, n_experts=n_experts, expert_rank=expert_rank)


def grow_pool(cfg: ModelConfig, params: Params, cms, rng, *, n_experts: int, expert_rank: int | None = None,
              lineage: Sequence[dict] = (), note: dict | None = None, slots=None,
              slots_template: Callable[[Params, Any], Any] | None = None, param_shardings=None):
  """The one way to grow a CMS expert pool: every block's pool -> `n_experts` slots, with everything that is
  shaped by the pool grown alike. Returns (new_cfg, new_params, new_cms, new_slots, new_lineage).

  params: old experts and every other leaf bit-identical; new experts inactive with the module's init (router
    0, A ~ N(0, 1/D), B ~ N(0, 0.02^2/R), so dreaming there injects novelty), drawn from
    fold_in(rng, len(lineage)) as `grow` does, so `apply_lineage` replays them. From a plain model
    (n_experts=0) the pool is created; `expert_rank` then gives its rank.
  cms: the active masks grow with False (inactive) in the new slots: the function is unchanged.
  slots: optional tree of optimizer states / gradient accumulators over (parts of) the parameters; its
    parameter-shaped leaves keep their values and get zeros in the new slots (Adam's mu/nu start there), other
    leaves (counters) carry over. `slots_template(new_params, new_cms)` gives its grown structure (abstract is
    enough, e.g. `jax.eval_shape(tx.init, new_params)`).
  lineage / note: the record appended is growth's {'op', 'args'} plus the `note` keys (where and why it
    grew: ignored by replay, kept in checkpoint meta).
  param_shardings: lay the grown parameters out for the new shapes inside the one jitted program.
  """
  plan = make_plan('grow_experts', cfg, n_experts=n_experts, expert_rank=expert_rank)
  validate_params(cfg, params)
  new_params = _grow_params(plan, params, jax.random.fold_in(rng, len(lineage)), param_shardings)
  new_cms = grow_tree_like(cms, cms_lib.init_cms_state(plan.new_cfg), fill=False, plan=plan)
  new_slots = None
  if slots is not None:
    if slots_template is None:
      raise ValueError('grow_pool: slots need slots_template(new_params, new_cms) for their grown structure')
    new_slots = grow_tree_like(slots, slots_template(new_params, new_cms), fill=0, plan=plan)
  note = dict(note or {})
  clash = sorted(set(note) & {'op', 'args'})
  if clash:
    raise ValueError(f'grow_pool: note keys {clash} would overwrite the lineage record\'s own fields')
  return plan.new_cfg, new_params, new_cms, new_slots, list(lineage) + [{**plan.record(), **note}]


OPS: dict[str, Callable[..., tuple[ModelConfig, Params]]] = {
    'widen_mlp': widen_mlp, 'add_heads': add_heads, 'widen_model': widen_model, 'add_layers': add_layers,
    'grow_experts': grow_experts}


def _op_name(op) -> str:
  if isinstance(op, str):
    return op
  for name, fn in OPS.items():
    if op is fn:
      return name
  raise ValueError(f'growth: {op!r} is not a growth op; pass one of {sorted(OPS)} (name or function)')


# ---- optimizer state and side trees ----

def _key_str(k) -> str:
  return str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))


def grow_tree_like(old_tree, new_template, fill=0, plan: Plan | None = None, out_shardings=None):
  """A tree shaped like `new_template` (arrays or ShapeDtypeStructs) holding `old_tree`'s values at their mapped
  positions (the plan's dim maps and layer renumbering; without a plan, the same paths and the leading corner)
  and `fill` elsewhere; `fill=None` keeps the template's own values there (they must then be arrays).
  A host (numpy) tree grows in numpy; otherwise one jitted program does it all (laid out by `out_shardings`,
  e.g. the optimizer-state part of `train.state_shardings`, when given)."""
  if fill is None and any(isinstance(t, jax.ShapeDtypeStruct) for t in jax.tree.leaves(new_template)):
    raise ValueError('grow_tree_like: fill=None takes the new entries from the template, which then needs '
                     'arrays, not ShapeDtypeStructs')
  old_flat = jax.tree_util.tree_flatten_with_path(old_tree)[0]
  old_paths = [tuple(map(_key_str, p)) for p, _ in old_flat]
  host = out_shardings is None and _on_host(old_tree) and (fill is not None or _on_host(new_template))
  xp = np if host else jnp

  def build(old_leaves, template):
    by_path = dict(zip(old_paths, old_leaves))

    def leaf(path, t):
      keys = tuple(map(_key_str, path))
      base = xp.array(t, copy=True) if fill is None else xp.full(t.shape, fill, t.dtype)
      src = plan.old_path(keys) if plan is not None else keys
      old = None if src is None else by_path.get(src)
      if old is None:
        return base
      if tuple(old.shape) == tuple(t.shape):
        return old.astype(t.dtype)
      if plan is not None:
        pos = plan.positions(keys, old.shape, t.shape)
      elif old.ndim == len(t.shape) and all(o <= n for o, n in zip(old.shape, t.shape)):
        pos = tuple(np.arange(o) for o in old.shape)
      else:
        raise ValueError(f'grow_tree_like: {"/".join(keys)} of shape {old.shape} does not fit in {t.shape}')
      return _scatter(old, base, pos)

    return jax.tree_util.tree_map_with_path(leaf, template)

  old_leaves = [x for _, x in old_flat]
  if host:
    return build(old_leaves, new_template)
  if fill is None:
    return jax.jit(build, out_shardings=out_shardings)(old_leaves, new_template)
  return jax.jit(lambda leaves: build(leaves, new_template), out_shardings=out_shardings)(old_leaves)


def grow_opt_state(old_opt_state, old_params: Params, new_params: Params, tx, plan: Plan, out_shardings=None):
  """Optimizer state for `new_params`: the structure of `tx.init(new_params)` (so multi_transform labels and
  masked/frozen leaves follow the new tree), old slot values kept exactly at the positions the surgery moved
  their parameters to (counters such as Adam's count carry over), zero in new slots (Adam's mu/nu init).
  `plan` is the growth's plan (`make_plan`, or `lineage_plan` for several steps): it carries the head
  re-indexing and layer renumbering. Old norm-scale slots are kept as they were, not rescaled. A host state
  grows on the host; a device state in one jitted program, laid out by `out_shardings` when given."""
  validate_params(plan.old_cfg, old_params)
  validate_params(plan.new_cfg, new_params)
  return grow_tree_like(old_opt_state, jax.eval_shape(tx.init, new_params), fill=0, plan=plan,
                        out_shardings=out_shardings)


# ---- sharded growth ----

def param_shardings(cfg: ModelConfig, mesh: Mesh, rules) -> Params:
  """NamedShardings of the parameters of `Transformer(cfg)` under the logical rules."""
  return sharding.logical_shardings(abstract_params(Transformer(cfg)), mesh, rules)


def grow_sharded(op, cfg: ModelConfig, params: Params, mesh: Mesh, rules, rng, **args):
  """Run one op under jit with the grown parameters laid out by the logical rules for the NEW shapes
  (no host ever holds the full grown tree). Returns (new_cfg, new_params)."""
  plan = make_plan(_op_name(op), cfg, **args)
  validate_params(cfg, params)
  shardings = param_shardings(plan.new_cfg, mesh, rules)
  return plan.new_cfg, _grow_params(plan, params, rng, shardings)


# ---- lineage ----

def _plans(cfg: ModelConfig, lineage: Sequence[dict]) -> list[Plan]:
  """Plan a whole lineage (every entry checked and every guard run) before anything is touched."""
  if not isinstance(lineage, (list, tuple)):
    raise ValueError(f'growth lineage must be a list of {{"op", "args"}} records, got {type(lineage).__name__}')
  plans = []
  for i, entry in enumerate(lineage):
    if not isinstance(entry, dict) or not {'op', 'args'} <= set(entry) or not isinstance(entry['args'], dict):
      raise ValueError(f'growth lineage[{i}] must be {{"op": name, "args": {{...}}}} (plus optional note keys), '
                       f'got {entry!r}')
    try:
      plans.append(make_plan(entry['op'], cfg, **entry['args']))
    except ValueError as e:
      raise ValueError(f'growth lineage[{i}]: {e}') from e
    cfg = plans[-1].new_cfg
  return plans


def lineage_plan(cfg: ModelConfig, lineage: Sequence[dict]) -> Plan:
  """One plan for a whole lineage (for `grow_opt_state` / `grow_tree_like` across several steps)."""
  plans = _plans(cfg, lineage)
  if not plans:
    return Plan('lineage', {'ops': []}, cfg, cfg, {}, _same_layers(cfg))
  return functools.reduce(compose, plans)


def grow(cfg: ModelConfig, params: Params, rng, lineage: Sequence[dict], op, **args):
  """One op with lineage bookkeeping: draws from fold_in(rng, len(lineage)) and returns
  (new_cfg, new_params, lineage + [record]), so `apply_lineage` with the same base rng replays it exactly."""
  plan = make_plan(_op_name(op), cfg, **args)
  validate_params(cfg, params)
  new = _grow_params(plan, params, jax.random.fold_in(rng, len(lineage)))
  return plan.new_cfg, new, list(lineage) + [plan.record()]


def apply_lineage(cfg: ModelConfig, params: Params, lineage: Sequence[dict], rng, start: int = 0):
  """Replay lineage records on a smaller (older) tree: op i draws from fold_in(rng, start + i); `start` is the
  index of lineage[0] in the full lineage, so a checkpoint taken mid-way replays the rest identically."""
  plans = _plans(cfg, lineage)
  validate_params(cfg, params)
  for i, plan in enumerate(plans):
    params = _grow_params(plan, params, jax.random.fold_in(rng, start + i))
  return (plans[-1].new_cfg if plans else cfg), params


def lineage_meta(base_cfg: ModelConfig, lineage: Sequence[dict]) -> dict:
  """What a checkpoint's meta records about growth: the base config, the lineage and the config it yields."""
  return {'base_model': dataclasses.asdict(base_cfg), 'lineage': list(lineage),
          'model': dataclasses.asdict(lineage_plan(base_cfg, lineage).new_cfg)}


def config_from_meta(meta: dict) -> ModelConfig:
  """The model config a checkpoint's arrays have: its base config grown by its lineage (checked against the
  recorded 'model' so a meta that disagrees with itself fails here, before any array is restored)."""
  base = ModelConfig.from_dict(meta.get('base_model', meta['model']))
  cfg = lineage_plan(base, meta.get('lineage', [])).new_cfg
  if 'model' in meta and cfg != ModelConfig.from_dict(meta['model']):
    raise ValueError(f"checkpoint meta is inconsistent: base_model grown by its lineage gives {cfg}, but 'model' "
                     f"records {meta['model']}")
  return cfg
