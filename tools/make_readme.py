"""Render README.md from nbs/index.ipynb, the one source of the front page (`make readme`).

nbdev's own `nbdev-readme` renders through Quarto; this does the same job without it: markdown cells verbatim,
code cells as ```python blocks, their text outputs as plain blocks, cells flagged `#| hide` (or `include: false`)
left out, and links between pages rewritten so that they work from the repository root (`05_learner.ipynb` and
`learner.html` become `nbs/05_learner.ipynb`).

    python tools/make_readme.py            # write README.md
    python tools/make_readme.py --check    # exit 1 if README.md differs from what index.ipynb renders
"""
import argparse, json, re, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_docs import html_pages, _is_external, _FENCE

ROOT = Path(__file__).resolve().parent.parent
HEADER = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py (`make readme`): edit the notebook, not this file. -->\n\n"
_DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
_SKIP_PLAIN = re.compile(r'^<(?:IPython\.core\.display\.\w+ object|Figure size [^>]*|[\w.]+ object at 0x[0-9a-f]+)>$')

def directives(src: str) -> tuple:
    "({name: value}, code without the leading `#|` lines) of a code cell"
    lines, d = src.splitlines(), {}
    while lines and (m := _DIRECTIVE.match(lines[0])):
        d[m.group(1).lower()] = m.group(2); lines.pop(0)
    return d, '\n'.join(lines).strip('\n')

def _true(v: str) -> bool: return v.strip().lower() not in ('false', '0', 'no')

def text_outputs(cell) -> list:
    "The text a reader of the README can use: stdout, the plain/markdown repr of results (no images, stderr, progress bars)"
    out = []
    for o in cell.get('outputs', []) or []:
        if o.get('output_type') == 'stream':
            if o.get('name') == 'stdout': out.append(('text', ''.join(o.get('text', ''))))
        elif o.get('output_type') in ('execute_result', 'display_data'):
            data = o.get('data', {})
            if 'text/markdown' in data:                                         # fastprogress: a fenced html table
                t = ''.join(data['text/markdown']).strip()
                if '<progress' not in t: out.append(('md', re.sub(r'^```html\n(.*)\n```$', r'\1', t, flags=re.S)))
            elif any(k.startswith('image/') for k in data): continue           # a figure: on the docs site only
            elif 'text/plain' in data:                                          # e.g. a DataFrame's plain repr
                t = ''.join(data['text/plain'])
                if not _SKIP_PLAIN.match(t.strip()): out.append(('text', t))   # not progress bars' `<... object>`
    return [(k, t.rstrip('\n')) for k, t in out if t.strip()]

def rewrite_links(md: str, nbs: Path, root: Path, pages: dict) -> str:
    "Relative links of a page in `nbs` rewritten relative to `root`; `x.html` -> the notebook it is rendered from"
    def fix(u):
        if not u or _is_external(u) or u.startswith('#'): return u
        path, _, frag = u.partition('#')
        f = (nbs / path).resolve()
        if f.suffix == '.html' and f in pages: f = pages[f]
        try: rel = f.relative_to(root.resolve()).as_posix()
        except ValueError: return u
        return rel + ('#' + frag if frag else '')
    lines, fenced = md.splitlines(), False
    for i, line in enumerate(lines):
        if _FENCE.match(line): fenced = not fenced; continue
        if fenced: continue
        parts = re.split(r'(`+[^`]*`+)', line)              # leave code spans alone
        for j in range(0, len(parts), 2):
            parts[j] = re.sub(r'(\]\(\s*<?)([^)\s>]+)', lambda m: m.group(1) + fix(m.group(2)), parts[j])
            parts[j] = re.sub(r'((?:href|src)\s*=\s*["\'])([^"\']+)', lambda m: m.group(1) + fix(m.group(2)), parts[j])
            parts[j] = re.sub(r'^(\s{0,3}\[[^\]]+\]:\s*<?)(\S+?)(?=>?(?:\s|$))', lambda m: m.group(1) + fix(m.group(2)), parts[j])
        lines[i] = ''.join(parts)
    return '\n'.join(lines)

def render(nb_path: Path = None, root: Path = None, outputs: bool = True) -> str:
    "The README text `nb_path` (default nbs/index.ipynb) renders to"
    root = Path(root or ROOT); nb_path = Path(nb_path or root / 'nbs' / 'index.ipynb')
    nbs = nb_path.parent; pages = html_pages(nbs)
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    blocks = []
    for c in nb['cells']:
        src = ''.join(c.get('source', ''))
        if c['cell_type'] == 'markdown':
            if src.strip(): blocks.append(rewrite_links(src.strip('\n'), nbs, root, pages))
            continue
        if c['cell_type'] != 'code': continue
        d, code = directives(src)
        if 'hide' in d or not _true(d.get('include', 'true')) or 'default_exp' in d: continue
        if code and _true(d.get('echo', 'true')): blocks.append(f"```python\n{code}\n```")
        if outputs and _true(d.get('output', 'true')):
            for kind, t in text_outputs(c): blocks.append(t if kind == 'md' else f"```\n{t}\n```")
    return HEADER + '\n\n'.join(blocks) + '\n'

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true', help="exit 1 if README.md is not what index.ipynb renders")
    ap.add_argument('--out', default=str(ROOT / 'README.md'))
    a = ap.parse_args(argv)
    new, out = render(), Path(a.out)
    old = out.read_text(encoding='utf-8') if out.exists() else None
    if a.check:
        if old == new: print("README.md is what nbs/index.ipynb renders"); return 0
        import difflib
        print("README.md differs from nbs/index.ipynb: run `make readme` (python tools/make_readme.py)")
        print('\n'.join(list(difflib.unified_diff((old or '').splitlines(), new.splitlines(), 'README.md', 'index.ipynb', lineterm=''))[:40]))
        return 1
    if old != new: out.write_text(new, encoding='utf-8'); print(f"wrote {out}")
    return 0

if __name__ == '__main__': sys.exit(main())
