"""Checks of the notebooks as a documentation site, run by `make test` (targets `clean-check` and `docs-check`).

    python tools/check_docs.py clean     # `nbdev-clean` would change nothing (run on a copy: the tree is untouched)
    python tools/check_docs.py docs      # sidebar complete, every link resolves, nbdev.yml current, `nbdev-proc-nbs` runs
    python tools/check_docs.py citations # nothing cites a document outside the repository
    python tools/check_docs.py sidebar links   # only these (no subprocess; about a second)

Each check returns a list of error strings (empty: passed); the command prints them and exits 1 if there are any.
"""
import argparse, difflib, json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC_EXTS = ('.ipynb', '.qmd', '.md')     # sources of a page (anchors are looked up in these)

def _skip(p: Path, base: Path) -> bool:
    "nbdev's rule: files and folders whose name starts with `_` or `.` are not pages"
    return any(part.startswith(('_', '.')) for part in p.relative_to(base).parts)

def notebooks(nbs: Path) -> list:
    "The notebooks of the site: every `*.ipynb` under `nbs`, except those under a name starting with `_` or `.`"
    nbs = Path(nbs)
    return sorted(p for p in nbs.rglob('*.ipynb') if not _skip(p, nbs))

def read_nb(p: Path) -> dict: return json.loads(Path(p).read_text(encoding='utf-8'))

def _src(cell) -> str: return ''.join(cell.get('source', ''))

# ---------------------------------------------------------------------------------------------------------- sidebar
def sidebar_entries(sidebar: Path) -> list:
    "Every file named in `website.sidebar.contents` of a Quarto sidebar file (sections walked recursively)"
    import yaml
    d = yaml.safe_load(Path(sidebar).read_text(encoding='utf-8')) or {}
    sb = (d.get('website') or {}).get('sidebar') or {}
    out = []
    def walk(x):
        if isinstance(x, str): out.append(x)
        elif isinstance(x, list):
            for o in x: walk(o)
        elif isinstance(x, dict):
            for k in ('href', 'file'):
                if isinstance(x.get(k), str) and not re.match(r'^[a-z]+:', x[k]): out.append(x[k])
            walk(x.get('contents', []))
    for s in (sb if isinstance(sb, list) else [sb]): walk(s.get('contents', []) if isinstance(s, dict) else s)
    return out

def check_sidebar(nbs: Path, sidebar: Path = None) -> list:
    "Every sidebar entry exists; every notebook of the site is in the sidebar, once"
    nbs = Path(nbs); sidebar = Path(sidebar or nbs / 'sidebar.yml')
    if not sidebar.exists(): return [f"{sidebar}: missing"]
    entries, errs = sidebar_entries(sidebar), []
    for e in sorted({e for e in entries if entries.count(e) > 1}): errs.append(f"{sidebar.name}: {e} is listed {entries.count(e)} times")
    for e in entries:
        if not (nbs / e).exists(): errs.append(f"{sidebar.name}: entry {e} does not exist in {nbs.name}/")
    listed = {str(Path(e)) for e in entries}
    for p in notebooks(nbs):
        rel = str(p.relative_to(nbs))
        if rel not in listed: errs.append(f"{sidebar.name}: {rel} is not in the sidebar (add it, or start its name with _ if it is not a page)")
    return errs

# ---------------------------------------------------------------------------------------------------------- anchors
_FENCE = re.compile(r'^\s*(```|~~~)')

def _strip_code(md: str) -> str:
    "Markdown without fenced code blocks and inline code spans (links there are not links)"
    keep, fenced = [], False
    for line in md.splitlines():
        if _FENCE.match(line): fenced = not fenced; continue
        if not fenced: keep.append(line)
    return re.sub(r'(`+)(?:(?!\1).)+?\1', '', '\n'.join(keep))

def pandoc_slug(heading: str) -> str:
    "The identifier pandoc (hence Quarto) gives a heading: formatting and links removed, lower case, spaces to `-`"
    s = re.sub(r'\{[^}]*\}\s*$', '', heading).strip()           # attributes are not part of the text
    s = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', s)             # links and images: their text
    s = re.sub(r'<[^>]+>', '', s)                                 # inline html tags
    s = s.replace('`', '').lower()
    s = ''.join(ch for ch in s if ch.isalnum() or ch in '_-. \t\n')
    s = re.sub(r'\s+', '-', s.strip())
    s = s[next((i for i, ch in enumerate(s) if ch.isalpha()), len(s)):]   # everything up to the first letter
    return s or 'section'

def gfm_slug(heading: str) -> str:
    "GitHub's identifier of a heading (accepted too: the same notebook is read on GitHub)"
    s = re.sub(r'\{[^}]*\}\s*$', '', heading).strip().lower().replace('`', '')
    s = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', s)
    return re.sub(r'[^\w\- ]', '', s).replace(' ', '-')

_HEADING = re.compile(r'^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$')
_ATTR_ID = re.compile(r'\{[^}]*#([A-Za-z][\w\-.:]*)[^}]*\}')
_HTML_ID = re.compile(r'<[a-zA-Z][^>]*\b(?:id|name)\s*=\s*["\']([^"\']+)["\']')

def md_anchors(md: str) -> set:
    "Anchors a markdown text defines: `{#id}` attributes (headings, spans, divs), heading slugs, html `id=`/`name=`"
    out = set(_HTML_ID.findall(md))
    keep, fenced = [], False
    for line in md.splitlines():
        if _FENCE.match(line): fenced = not fenced; continue
        if fenced: continue
        keep.append(line)
        m = _HEADING.match(line)
        if m and not _ATTR_ID.search(m.group(1)): out |= {pandoc_slug(m.group(1)), gfm_slug(m.group(1))}
    out |= set(_ATTR_ID.findall('\n'.join(keep)))
    return out

def nb_anchors(nb: dict) -> set:
    "Anchors of a notebook page: its markdown cells and the markdown/html outputs of its code cells (`show_doc` headings)"
    out = set()
    for c in nb.get('cells', []):
        if c.get('cell_type') == 'markdown': out |= md_anchors(_src(c))
        for o in c.get('outputs', []) or []:
            data = o.get('data', {})
            for k in ('text/markdown', 'text/html'):
                if k in data: out |= md_anchors(''.join(data[k]))
    return out

# ---------------------------------------------------------------------------------------------------------- links
_MD_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+["\'][^)]*["\'])?\s*\)')
_REF_DEF = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)', re.M)
_HTML_LINK = re.compile(r'<(?:a|img)\b[^>]*\b(?:href|src)\s*=\s*["\']([^"\']+)["\']')

def md_links(md: str) -> list:
    "Link and image targets of a markdown text (inline, reference definitions, html `href`/`src`), code excluded"
    t = _strip_code(md)
    return [u for u in _MD_LINK.findall(t) + _REF_DEF.findall(t) + _HTML_LINK.findall(t) if u]

def _is_external(u: str) -> bool: return bool(re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', u)) or u.startswith('//')

def html_name(nb: Path) -> str:
    "The page nbdev renders a notebook to: lower case, numeric prefix stripped (`09a_bench.ipynb` -> `bench.html`)"
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', Path(nb).name.lower()).rsplit('.', 1)[0] + '.html'

def html_pages(nbs: Path) -> dict:
    "{rendered page path: source notebook} for every notebook of the site"
    nbs = Path(nbs)
    return {(p.parent / html_name(p)).resolve(): p for p in notebooks(nbs)}

def resolve(target: str, page: Path, nbs: Path, root: Path, pages: dict = None):
    "(file, error) for a relative link `target` written in `page`; `x.html` is the page nbdev renders (`NN_x.ipynb`)"
    path = target.split('#', 1)[0].split('?', 1)[0]
    if not path: return page, None
    f = (page.parent / path).resolve()
    try: f.relative_to(root.resolve())
    except ValueError: return None, f"{target}: points outside the repository"
    if f.suffix == '.html':
        pages = html_pages(nbs) if pages is None else pages
        if f in pages: return pages[f], None
        nb = next((p for p in notebooks(nbs) if p.with_suffix('.html').resolve() == f), None)
        hint = f" (the page of {nb.name} is {html_name(nb)}; or link {nb.name})" if nb else ''
        return None, f"{target}: no page of that name{hint}"
    if f.is_file(): return f, None
    return None, f"{target}: no such file"

def check_links(nbs: Path, root: Path = None) -> list:
    "Every relative link in the markdown of every notebook resolves to a file of the repository; every `#anchor` exists"
    nbs = Path(nbs); root = Path(root or nbs.parent)
    errs, anchors, pages = [], {}, html_pages(nbs)
    def anch(p):
        if p not in anchors: anchors[p] = nb_anchors(read_nb(p)) if p.suffix == '.ipynb' else md_anchors(p.read_text(encoding='utf-8'))
        return anchors[p]
    for p in notebooks(nbs):
        rel = p.relative_to(nbs)
        for i, c in enumerate(read_nb(p).get('cells', [])):
            if c.get('cell_type') != 'markdown': continue
            for u in md_links(_src(c)):
                if _is_external(u): continue
                f, err = resolve(u, p, nbs, root, pages)
                if err: errs.append(f"{rel} (cell {i}): link {err}"); continue
                frag = u.split('#', 1)[1] if '#' in u else ''
                if frag and f.suffix in DOC_EXTS and frag not in anch(f):
                    errs.append(f"{rel} (cell {i}): link {u}: no anchor #{frag} in {f.relative_to(root)} "
                                f"(define it with {{#{frag}}} or a heading whose slug it is)")
    return errs

# ---------------------------------------------------------------------------------------------------------- clean
def _tool(name):
    "A console script of the environment running this file (the venv's), else from PATH"
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else (shutil.which(name) or name)

def check_clean(root: Path = None, nbs: str = 'nbs') -> list:
    "`nbdev-clean` leaves every notebook unchanged: run on a copy (with the project's configuration), then compared"
    root = Path(root or ROOT); src = root / nbs
    with tempfile.TemporaryDirectory(prefix='ltat-clean-') as tmp:
        tmp = Path(tmp)
        for cfg in ('pyproject.toml', 'settings.ini'):
            if (root / cfg).exists(): shutil.copy(root / cfg, tmp / cfg)
        files = notebooks(src)
        for p in files:
            d = tmp / nbs / p.relative_to(src); d.parent.mkdir(parents=True, exist_ok=True); shutil.copy(p, d)
        r = subprocess.run([_tool('nbdev-clean'), '--fname', nbs], cwd=tmp, capture_output=True, text=True)
        errs = [f"nbdev-clean failed ({r.returncode}): {r.stderr[-2000:]}"] if r.returncode else []
        errs += [f"nbdev-clean: {l.strip()}" for l in r.stderr.splitlines() if 'Failed to clean' in l]
        for p in files:
            old, new = p.read_text(encoding='utf-8'), (tmp / nbs / p.relative_to(src)).read_text(encoding='utf-8')
            if old != new:
                diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), 'stored', 'cleaned', n=0, lineterm=''))
                errs.append(f"{p.relative_to(root)} is not clean ({sum(l[:1] in '+-' for l in diff[2:])} lines differ; run "
                            f"`nbdev-clean --fname {p.relative_to(root)}`):\n    " + '\n    '.join(diff[2:10]))
    return errs

# ---------------------------------------------------------------------------------------------------------- proc
_PROC = """import sys
from nbdev.serve import proc_nbs
proc_nbs(n_workers=int(sys.argv[1]))"""

def check_proc(root: Path = None, n_workers: int = 2) -> list:
    """The processing step of `nbdev-proc-nbs` (`nbdev.serve.proc_nbs`, what `quarto render` then reads) runs on every
    notebook. The command itself would also try to install Quarto and rewrite nbs/nbdev.yml; `check_nbdev_yml` covers that."""
    root = Path(root or ROOT)
    r = subprocess.run([sys.executable, '-c', _PROC, str(n_workers)], cwd=root, capture_output=True, text=True)
    out = r.stdout + r.stderr
    n_mixed = out.count('Found cells containing imports and other code')
    if n_mixed: print(f"  note: {n_mixed} cell(s) mix imports with other code; nbdev runs them when it builds the docs (see nbdev's FAQ)")
    if r.returncode == 0: return []
    msgs = re.findall(r'(Error in notebook.*?\n[\w.]*(?:Error|Exception|Interrupt)\b[^\n]*)', out, re.S) or [out[-3000:]]
    why = ("a cell that contains an import (even inside a function) is executed when the docs are built, in a kernel "
           "that ran only such cells and the exported ones")
    return [f"nbdev-proc-nbs failed; {why}:\n    " + '\n    '.join(m.strip().splitlines()[:3] + ['...'] + m.strip().splitlines()[-2:])
            for m in dict.fromkeys(msgs)]

_NBDEV_YML = """from nbdev.quarto import refresh_quarto_yml
refresh_quarto_yml()"""

def check_nbdev_yml(root: Path = None) -> list:
    "nbs/nbdev.yml is what nbdev generates from pyproject.toml (else `nbdev-proc-nbs`/`nbdev-docs` rewrite it)"
    root = Path(root or ROOT)
    with tempfile.TemporaryDirectory(prefix='ltat-yml-') as tmp:
        tmp = Path(tmp); (tmp / 'nbs').mkdir()
        shutil.copy(root / 'pyproject.toml', tmp / 'pyproject.toml')
        r = subprocess.run([sys.executable, '-c', _NBDEV_YML], cwd=tmp, capture_output=True, text=True)
        if r.returncode: return [f"refresh_quarto_yml failed: {r.stderr[-1500:]}"]
        want, have = (tmp / 'nbs' / 'nbdev.yml').read_text(), (root / 'nbs' / 'nbdev.yml').read_text()
    if want == have: return []
    return ["nbs/nbdev.yml is not what nbdev generates from pyproject.toml; write this:\n    " + '\n    '.join(want.splitlines())]

# -------------------------------------------------------------------------------------------------------- citations
# documents a reader of the repository does not have: notes kept beside it, and internal file ids of papers
OUTSIDE = re.compile(r'methods\.md|engineering\.md|style\.md|engineering notes|\.\./shared/|\b\d{3}_[0-9a-f]{16}\b', re.I)

def outside_citations(text: str) -> list:
    "Every citation in `text` of a document outside the repository"
    return [m.group(0) for m in OUTSIDE.finditer(text)]

def check_citations(root: Path = None) -> list:
    "Nothing in nbs/, ltat/, tests/ or the README cites a document outside the repository"
    root = Path(root or ROOT)
    files = [*notebooks(root / 'nbs'), *sorted((root / 'ltat').rglob('*.py')), *sorted((root / 'tests').rglob('*.py')), root / 'README.md']
    errs = []
    for f in files:
        if not f.is_file(): continue
        for i, line in enumerate(f.read_text(encoding='utf-8').splitlines(), 1):
            if '# citations-check: allow' in line: continue
            for hit in outside_citations(line): errs.append(f"{f.relative_to(root)}:{i}: cites {hit!r}, a document outside the repository")
    return errs

CHECKS = dict(clean=lambda a: check_clean(ROOT), sidebar=lambda a: check_sidebar(ROOT / 'nbs'),
              links=lambda a: check_links(ROOT / 'nbs', ROOT), nbdev_yml=lambda a: check_nbdev_yml(ROOT),
              proc=lambda a: check_proc(ROOT, a.n_workers), citations=lambda a: check_citations(ROOT))
GROUPS = dict(docs=['sidebar', 'links', 'nbdev_yml', 'citations', 'proc'], all=['clean', 'sidebar', 'links', 'nbdev_yml', 'citations', 'proc'])

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('checks', nargs='*', default=['all'], help=f"of {sorted(CHECKS)} or {sorted(GROUPS)}")
    ap.add_argument('--n-workers', type=int, default=int(os.environ.get('NBDEV_WORKERS', 2)))
    a = ap.parse_args(argv)
    names = [n for c in a.checks for n in GROUPS.get(c, [c])]
    bad = [n for n in names if n not in CHECKS]
    if bad: ap.error(f"unknown check(s) {bad}")
    n_err = 0
    for n in dict.fromkeys(names):
        t = time.time(); errs = CHECKS[n](a); n_err += len(errs)
        for e in errs: print(f"  {e}")
        print(f"{n}: {'ok' if not errs else f'{len(errs)} problem(s)'} ({time.time() - t:.1f} s)", flush=True)
    return 1 if n_err else 0

if __name__ == '__main__': sys.exit(main())
