"""Every relative link in README.md and docs/*.md points at a file that exists and, with a #fragment into a
markdown file, at a heading that exists there: the README is a map of docs/, and a moved section must not leave a
dead link behind. Pure text, no imports of the package (milliseconds)."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
FENCE = re.compile(r'^(```|~~~).*?^\1', re.M | re.S)


def anchors(path: pathlib.Path) -> set[str]:
  """GitHub's heading ids: lowercased, punctuation other than '-' and '_' dropped, spaces to '-', repeats -1, -2."""
  seen, out = {}, set()
  for line in FENCE.sub('', path.read_text(encoding='utf-8')).splitlines():
    m = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
    if not m:
      continue
    slug = re.sub(r'[^\w\- ]', '', m[1].lower()).replace(' ', '-')
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f'{slug}-{n}')
  return out


def links(path: pathlib.Path) -> list[str]:
  text = FENCE.sub('', path.read_text(encoding='utf-8'))
  text = re.sub(r'`[^`\n]*`', '', text)   # inline code is not a link
  return [t for t in LINK.findall(text) if not re.match(r'[a-z][a-z0-9+.-]*:', t)]   # skip http:, mailto: ...


def dead_links(pages=PAGES, root=ROOT) -> list[str]:
  dead = []
  for page in pages:
    for target in links(page):
      file, _, fragment = target.partition('#')
      dest = (page.parent / file).resolve() if file else page
      if not dest.exists():
        dead.append(f'{page.relative_to(root)}: {target} (no file {file})')
      elif fragment and dest.suffix == '.md' and fragment not in anchors(dest):
        dead.append(f'{page.relative_to(root)}: {target} (no heading #{fragment} in {dest.name})')
  return dead


def test_the_link_checker_finds_a_dead_file_and_a_dead_anchor(tmp_path):
  (tmp_path / 'b.md').write_text('## Part `two` (of 3)\n## Part `two` (of 3)\n')
  (tmp_path / 'a.md').write_text('# Title\n\n[ok](#title) [ok](b.md#part-two-of-3-1) [gone](c.md) [bad](b.md#part)\n'
                                 '```\n[in code](d.md)\n```\n`[inline](e.md)` [web](https://example.com/x.md)\n')
  assert dead_links([tmp_path / 'a.md'], tmp_path) == ['a.md: c.md (no file c.md)',
                                                        'a.md: b.md#part (no heading #part in b.md)']


def test_readme_and_docs_links_resolve():
  assert (ROOT / 'docs' / 'results.md').exists()
  dead = dead_links()
  assert not dead, 'dead links (fix the link or the heading it points at):\n' + '\n'.join(dead)
