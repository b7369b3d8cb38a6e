"""The package's import graph: no cycles, and every import points down the layers README's "Architecture" names.

Read from the source with `ast` (imports inside functions count too), so the test needs no imports of its own
and names each offending edge.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Lowest first; a module may import its own layer and the layers below it, never one above.
LAYERS = (
    ('base', ('sleep_jax._env', 'sleep_jax.models', 'sleep_jax.io', 'sleep_jax.losses', 'sleep_jax.sharding',
              'sleep_jax.guard', 'sleep_jax.faults', 'sleep_jax.metrics', 'sleep_jax.results')),
    ('steps', ('sleep_jax.sampling', 'sleep_jax.train', 'sleep_jax.checkpoint', 'sleep_jax.rewards',
               'sleep_jax.growth', 'sleep_jax.build')),
    ('data', ('sleep_jax.data', 'sleep_jax.evals')),   # evals: QA scoring and the probe over the data's formats
    ('phases', ('sleep_jax.phases',)),
    ('runtime', ('sleep_jax.runtime',)),
    ('cycle', ('sleep_jax.cycle', 'sleep_jax.loop')),
    ('jobs', ('sleep_jax.jobs',)),
)


def _modules(package: str = 'sleep_jax') -> dict[str, pathlib.Path]:
  out = {}
  for p in (ROOT / package).rglob('*.py'):
    name = '.'.join(p.relative_to(ROOT).with_suffix('').parts)
    out[name[:-len('.__init__')] if name.endswith('.__init__') else name] = p
  return out


def import_graph(package: str = 'sleep_jax') -> dict[str, set[str]]:
  """module -> the package modules it imports (edges into a package's __init__ are left out: importing
  `a.b.c` runs `a.b`'s __init__ whatever the direction, as in ../shared/tools/import_cycles.py)."""
  mods = _modules(package)
  edges = {m: set() for m in mods}
  for m, p in mods.items():
    pkg = m if p.name == '__init__.py' else m.rsplit('.', 1)[0]
    for node in ast.walk(ast.parse(p.read_text(encoding='utf-8'))):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          parts = pkg.split('.')[:len(pkg.split('.')) - node.level + 1]
          base = '.'.join(parts + ([base] if base else []))
        names = [base] + [f'{base}.{a.name}' for a in node.names]
      else:
        continue
      for n in names:
        while n and n not in mods:
          n = n.rsplit('.', 1)[0] if '.' in n else ''
        if n and n != m and mods[n].name != '__init__.py':
          edges[m].add(n)
  return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan, iterative)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
  for root in edges:
    if root in index:
      continue
    work = [(root, iter(sorted(edges[root])))]
    index[root] = low[root] = counter[0]
    counter[0] += 1
    stack.append(root)
    on.add(root)
    while work:
      v, it = work[-1]
      w = next(it, None)
      if w is not None:
        if w not in index:
          index[w] = low[w] = counter[0]
          counter[0] += 1
          stack.append(w)
          on.add(w)
          work.append((w, iter(sorted(edges[w]))))
        elif w in on:
          low[v] = min(low[v], index[w])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[v])
      if low[v] == index[v]:
        comp = []
        while True:
          w = stack.pop()
          on.discard(w)
          comp.append(w)
          if w == v:
            break
        if len(comp) > 1:
          out.append(sorted(comp))
  return out


def layer_of(module: str) -> int:
  for rank, (_, prefixes) in enumerate(LAYERS):
    if any(module == p or module.startswith(p + '.') for p in prefixes):
      return rank
  raise AssertionError(f'{module} is in no layer of tests/test_imports.LAYERS: add it where it belongs')


def test_the_cycle_finder_finds_a_cycle():
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
  assert cycles({'a': {'b'}, 'b': set()}) == []


def test_sleep_jax_has_no_import_cycles():
  found = cycles(import_graph())
  assert not found, 'import cycles: ' + '; '.join(' <-> '.join(c) for c in found)


def test_imports_point_down_the_layers():
  edges = import_graph()
  up = sorted(f'{m} ({LAYERS[layer_of(m)][0]}) imports {n} ({LAYERS[layer_of(n)][0]})'
              for m, ns in edges.items() if m != 'sleep_jax' for n in ns if layer_of(n) > layer_of(m))
  assert not up, 'imports up the layers:\n' + '\n'.join(up)
