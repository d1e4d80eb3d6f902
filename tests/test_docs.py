"The front page and the docs checks: README.md is what nbs/index.ipynb renders; the checkers of tools/check_docs.py fail when they should"
import json, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import check_docs as cd
import make_readme as mr

def _nb(*cells):
    "A minimal notebook from ('md'|'code', source[, outputs]) tuples"
    out = []
    for c in cells:
        kind, src, outs = (c + (None,))[:3]
        if kind == 'md': out.append(dict(cell_type='markdown', id=f'c{len(out)}', metadata={}, source=src))
        else: out.append(dict(cell_type='code', id=f'c{len(out)}', metadata={}, source=src, execution_count=None, outputs=outs or []))
    return dict(cells=out, metadata={}, nbformat=4, nbformat_minor=5)

def _write(path, nb):
    "Write `nb` as nbdev does (fastcore's `nb2str`: sorted keys, sources as lists of lines)"
    from fastcore.nbio import nb2str
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nb2str(nb), encoding='utf-8')
    return path

# ---------------------------------------------------------------------------------------------------------- README
def test_readme_is_rendered_from_index():
    "README.md differs from what index.ipynb renders: edit the notebook, then `make readme`"
    assert (ROOT / 'README.md').read_text(encoding='utf-8') == mr.render(), \
        "README.md is not what nbs/index.ipynb renders: run `make readme` (python tools/make_readme.py)"

def test_render_cells_links_outputs(tmp_path):
    nbs = tmp_path / 'nbs'
    _write(nbs / '05_learner.ipynb', _nb(('md', '# Learner')))
    idx = _write(nbs / 'index.ipynb', _nb(
        ('md', '# proj\n\n> summary'),
        ('code', '#| hide\nimport secret_setup'),
        ('code', '#| echo: false\nshown_output_only()', [dict(output_type='stream', name='stdout', text=['quiet\n'])]),
        ('code', 'x = 1\nx', [dict(output_type='execute_result', execution_count=None, metadata={}, data={'text/plain': ['1']}),
                              dict(output_type='stream', name='stderr', text=['a warning\n']),
                              dict(output_type='display_data', metadata={}, data={'text/plain': ['<Figure size 640x480 with 1 Axes>'],
                                                                                 'image/png': 'iVBOR'})]),
        ('code', 'learn.fit(1)', [dict(output_type='display_data', metadata={}, data={'text/markdown': ['```html\n<div><progress max="9" value="3"></progress></div>\n```'], 'text/plain': ['<IPython.core.display.HTML object>']}),
                                  dict(output_type='display_data', metadata={}, data={'text/markdown': ['```html\n<table><tr><td>epoch</td></tr></table>\n```'], 'text/plain': ['<IPython.core.display.HTML object>']})]),
        ('md', 'See [the learner](05_learner.ipynb#adv), [its page](learner.html), `[code](05_learner.ipynb)`, '
               '[fastai](https://docs.fast.ai), [here](#top) and ![fig](figures/a.png).'),
    ))
    r = mr.render(idx, tmp_path)
    assert r.startswith(mr.HEADER)
    assert 'secret_setup' not in r and 'shown_output_only' not in r and 'quiet' in r
    assert '```python\nx = 1\nx\n```\n\n```\n1\n```' in r
    assert 'a warning' not in r and 'Figure size' not in r
    assert '<progress' not in r and '```python\nlearn.fit(1)\n```\n\n<table><tr><td>epoch</td></tr></table>' in r   # the table, unfenced
    assert '[the learner](nbs/05_learner.ipynb#adv)' in r and '[its page](nbs/05_learner.ipynb)' in r
    assert '`[code](05_learner.ipynb)`' in r                          # code spans are left alone
    assert '(https://docs.fast.ai)' in r and '(#top)' in r and '![fig](nbs/figures/a.png)' in r
    assert mr.render(idx, tmp_path, outputs=False).count('```\n1\n```') == 0

def test_directives():
    test = mr.directives('#| hide\n#|   eval: false\nx = 1\n#| not a directive any more')
    assert test == ({'hide': '', 'eval': 'false'}, 'x = 1\n#| not a directive any more')

# ---------------------------------------------------------------------------------------------------------- names, anchors
@pytest.mark.parametrize('nb,page', [('09a_bench.ipynb', 'bench.html'), ('00_core.ipynb', 'core.html'), ('index.ipynb', 'index.html'),
                                     ('30_perf.ipynb', 'perf.html'), ('98_References.ipynb', 'references.html')])
def test_html_name(nb, page): assert cd.html_name(nb) == page

@pytest.mark.parametrize('heading,slug', [('Long-tailed losses in AT', 'long-tailed-losses-in-at'), ('`AdvTrain.craft`', 'advtrain.craft'),
                                          ('1. Why it works', 'why-it-works'), ('The [loss](x.ipynb), again!', 'the-loss-again'),
                                          ('τ-norm and LWS', 'τ-norm-and-lws'), ('Where *tails* lose', 'where-tails-lose')])
def test_pandoc_slug(heading, slug): assert cd.pandoc_slug(heading) == slug

def test_anchors():
    md = "## Intro\n\n### Known {#ref-x}\n\nText [a span]{#span-id} <a id='html-id'></a>\n\n```\n## not a heading\n```"
    a = cd.md_anchors(md)
    assert {'intro', 'ref-x', 'span-id', 'html-id'} <= a
    assert 'not-a-heading' not in a and 'known' not in a              # an explicit id replaces the slug
    nb = _nb(('code', 'show_doc(f)', [dict(output_type='display_data', metadata={}, data={'text/markdown': ['---\n\n### AdvTrain.craft\n']})]))
    assert 'advtrain.craft' in cd.nb_anchors(nb)

def test_md_links():
    md = "[a](x.ipynb) ![i](f.png 'title') `[no](code.ipynb)` <a href=\"y.html#z\">y</a>\n\n[ref]: r.ipynb\n\n```\n[no](fence.ipynb)\n```"
    assert sorted(cd.md_links(md)) == ['f.png', 'r.ipynb', 'x.ipynb', 'y.html#z']

# ---------------------------------------------------------------------------------------------------------- sidebar, links
def _site(tmp_path):
    nbs = tmp_path / 'nbs'
    _write(nbs / 'index.ipynb', _nb(('md', '# Home\n\n[core](00_core.ipynb) and [data](data.html#ref-d)')))
    _write(nbs / '00_core.ipynb', _nb(('md', '# Core\n\n## The threat model')))
    _write(nbs / '01_data.ipynb', _nb(('md', '# Data\n\n### Subsets {#ref-d}')))
    _write(nbs / '_draft.ipynb', _nb(('md', '[broken](nowhere.ipynb)')))      # not a page: ignored
    (nbs / 'figures').mkdir(); (nbs / 'figures' / 'a.png').write_bytes(b'png')
    return nbs

def _sidebar(nbs, *entries):
    body = '\n'.join(f'          - {e}' for e in entries)
    (nbs / 'sidebar.yml').write_text(f"website:\n  sidebar:\n    contents:\n      - section: All\n        contents:\n{body}\n")

def test_sidebar(tmp_path):
    nbs = _site(tmp_path)
    _sidebar(nbs, 'index.ipynb', '00_core.ipynb', '01_data.ipynb')
    assert cd.check_sidebar(nbs) == []
    _sidebar(nbs, 'index.ipynb', '00_core.ipynb', '02_gone.ipynb', '00_core.ipynb')
    errs = '\n'.join(cd.check_sidebar(nbs))
    assert '02_gone.ipynb does not exist' in errs and '01_data.ipynb is not in the sidebar' in errs
    assert '00_core.ipynb is listed 2 times' in errs and '_draft' not in errs

def test_links(tmp_path):
    nbs = _site(tmp_path)
    assert cd.check_links(nbs, tmp_path) == []
    _write(nbs / '02_bad.ipynb', _nb(('md', '\n'.join([
        '[ok](00_core.ipynb#the-threat-model) [ok](core.html) [ok](figures/a.png) [ok](#local) [ok](https://x.org/a.ipynb)',
        '[1](00_core.ipynb#missing) [2](03_none.ipynb) [3](00_core.html) [4](../../outside.md) [5](figures/b.png) [6](#nope)',
        '<a id="local"></a> `[not a link](zzz.ipynb)`']))))
    errs = cd.check_links(nbs, tmp_path)
    assert len(errs) == 6, errs
    e = '\n'.join(errs)
    assert 'no anchor #missing in nbs/00_core.ipynb' in e and '03_none.ipynb: no such file' in e
    assert 'the page of 00_core.ipynb is core.html' in e and 'outside the repository' in e
    assert 'figures/b.png: no such file' in e and 'no anchor #nope in nbs/02_bad.ipynb' in e

# ---------------------------------------------------------------------------------------------------------- clean
def test_clean(tmp_path):
    (tmp_path / 'pyproject.toml').write_text('[project]\nname = "fake"\nversion = "0.0.1"\n\n[tool.nbdev]\nclean_ids = true\n')
    nbs = tmp_path / 'nbs'
    stored = _nb(('code', 'x = 1\nx', [dict(output_type='execute_result', execution_count=None, metadata={}, data={'text/plain': ['1']})]))
    f = _write(nbs / 'a.ipynb', stored)
    clean = f.read_text()
    assert cd.check_clean(tmp_path) == []
    dirty = json.loads(clean)
    dirty['cells'][0]['execution_count'] = 3
    dirty['cells'][0]['metadata'] = {'execution': {'iopub.execute_input': '2026-01-01T00:00:00Z'}}
    f.write_text(json.dumps(dirty, indent=1))
    errs = cd.check_clean(tmp_path)
    assert len(errs) == 1 and 'nbs/a.ipynb is not clean' in errs[0], errs
    assert f.read_text() == json.dumps(dirty, indent=1)       # the check never touches the tree

def test_proc(tmp_path):
    "The docs processing fails on a cell nbdev runs (it shows docs or imports) that needs a cell it does not run"
    (tmp_path / 'pyproject.toml').write_text('[project]\nname = "fake"\nversion = "0.0.1"\n\n[tool.nbdev]\n')
    _write(tmp_path / 'nbs' / 'a.ipynb', _nb(('md', '# A\n\n> a page'), ('code', 'def helper(): return 1'),
                                                  ('code', 'from nbdev.showdoc import show_doc\nshow_doc(helper)')))
    errs = cd.check_proc(tmp_path, n_workers=1)
    assert len(errs) == 1 and "NameError: name 'helper' is not defined" in errs[0], errs
    # (the passing case is `make docs-check` on the real notebooks)

def test_citations(tmp_path):
    "The citations check finds notes and file ids outside the repository, in notebooks, modules and tests, and nothing else"
    text = 'see methods.md §4.1 and the engineering notes §3, paper 000_f215f00d3062201b'  # citations-check: allow
    assert cd.outside_citations(text) == ['methods.md', 'engineering notes', '000_f215f00d3062201b']  # citations-check: allow
    assert cd.outside_citations('RoBal (CVPR 2021, arXiv 2104.02703), `methods/train_modes.py`, 98_references.ipynb') == []
    (tmp_path / 'nbs').mkdir(); (tmp_path / 'ltat').mkdir(); (tmp_path / 'tests').mkdir()
    _write(tmp_path / 'nbs' / 'a.ipynb', _nb(('md', 'As in ../shared/reference/style.md.')))  # citations-check: allow
    (tmp_path / 'ltat' / 'm.py').write_text('x = 1  # see methods.md\n')  # citations-check: allow
    (tmp_path / 'README.md').write_text('clean\n')
    errs = cd.check_citations(tmp_path)
    assert len(errs) == 3 and errs[0].startswith('nbs/a.ipynb') and 'ltat/m.py:1' in errs[2]
    assert cd.check_citations(ROOT) == []
