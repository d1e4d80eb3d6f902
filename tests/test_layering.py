"""The house: each module of ltat imports only from the layers below it (imports inside functions count too), there is no
import cycle, and every module imports alone in a fresh process."""
import ast, os, subprocess, sys
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / 'ltat'
# from the bottom; a module may import from its own layer's earlier entries only where listed in SAME_LAYER
LAYERS = [['core'], ['data', 'losses', 'attacks', 'robustlt'], ['models'], ['test_utils'], ['learner'], ['fast'],
          ['lt_at', 'baselines', 'robal', 'at_bsl', 'reat', 'srat', 'self_distill', 'taet'],
          ['evaluate', 'checkpoint', 'presets', 'experiment'], ['reproduce', 'bench'], ['all'], ['cli']]
SAME_LAYER = {('srat', 'reat'), ('experiment', 'evaluate'), ('experiment', 'checkpoint'), ('experiment', 'presets')}
LEVEL = {m: i for i, ms in enumerate(LAYERS) for m in ms}

def modules():
    return sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_')) + ['theory']

def ltat_imports(src: str, name: str) -> set:
    "Names of the ltat modules `src` imports, at any depth of the code (functions included), relative or absolute"
    out = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('ltat.')}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level: out |= {mod.split('.')[0]} if mod else {a.name for a in node.names}
            elif mod.startswith('ltat.'): out.add(mod.split('.')[1])
            elif mod == 'ltat': out |= {a.name for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', '')) in ('import_module', '__import__'):
            for a in node.args[:1]:
                if isinstance(a, ast.Constant) and str(a.value).startswith('ltat.'): out.add(a.value.split('.')[1])
    return out - {name, '_modidx', '__version__'}

def graph():
    g = {}
    for m in modules():
        f = PKG / f'{m}.py' if m != 'theory' else None
        srcs = [f.read_text()] if f else [p.read_text() for p in (PKG / 'theory').glob('*.py')]
        g[m] = set().union(*(ltat_imports(s, m) for s in srcs))
    return g

def test_parser_sees_every_form():
    src = "from .core import a\nimport ltat.data\nfrom ltat.models import b\ndef f():\n    from ltat.cli import main\n    importlib.import_module('ltat.fast')\n"
    assert ltat_imports(src, 'x') == {'core', 'data', 'models', 'cli', 'fast'}

def test_every_module_has_a_layer():
    missing = [m for m in modules() if m not in LEVEL and m != 'theory']
    assert not missing, f"modules without a layer in tests/test_layering.py: {missing}"

def test_imports_go_down():
    bad = []
    for m, deps in graph().items():
        if m == 'theory': continue           # the theory package sits beside the library: it may use any layer but cli
        for d in deps:
            if d not in LEVEL: continue
            if LEVEL[d] > LEVEL[m] or (LEVEL[d] == LEVEL[m] and (m, d) not in SAME_LAYER): bad.append(f"{m} -> {d}")
    assert not bad, "imports from the same or a higher layer: " + ', '.join(sorted(bad))

def test_no_cycle():
    g, state, cycles = graph(), {}, []
    def visit(m, stack):
        state[m] = 1
        for d in g.get(m, ()):
            if state.get(d) == 1: cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d in g and not state.get(d): visit(d, stack + [d])
        state[m] = 2
    for m in g:
        if not state.get(m): visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"
    assert 'cli' not in g['theory']

def test_cycle_detector_can_fail(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], 'graph', lambda: {'a': {'b'}, 'b': {'a'}, 'theory': set()})
    with pytest.raises(AssertionError, match='cycles'): test_no_cycle()

# A fresh interpreter that loads the third-party libraries once, then forks one child per ltat module: each child starts with
# no ltat module loaded and imports its module alone (what a fresh process does, without paying for torch's import 33 times).
_FORK_IMPORTS = r"""
import importlib, os, sys, traceback
for lib in os.environ.get('PRELOAD', 'numpy pandas matplotlib torch torchvision fastcore.all fastai.basics fastai.vision.all').split():
    importlib.import_module(lib)
assert not any(k == 'ltat' or k.startswith('ltat.') for k in sys.modules), 'ltat loaded before the fork'
bad = {}
for m in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try: importlib.import_module('ltat.' + m); code = 0
        except BaseException: os.write(w, traceback.format_exc()[-1500:].encode()); code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f: err = f.read()
    if os.waitpid(pid, 0)[1] != 0: bad[m] = err or 'the child died'
print(repr(bad))
"""

def _import_alone(mods):
    "{module: traceback} of the ltat modules that fail to import alone"
    r = subprocess.run([sys.executable, '-c', _FORK_IMPORTS, *mods], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return eval(r.stdout.strip().splitlines()[-1])

def test_every_module_imports_alone():
    "Each module in a process with no other ltat module loaded, so a module that works only after another was imported fails"
    bad = _import_alone(modules())
    assert not bad, bad

def test_import_alone_can_fail(tmp_path):
    "The check sees a module that needs another one imported first (here, a name used before it exists)"
    (tmp_path / 'ltat').mkdir()
    (tmp_path / 'ltat' / '__init__.py').write_text('')
    (tmp_path / 'ltat' / 'good.py').write_text('x = 1\n')
    (tmp_path / 'ltat' / 'bad.py').write_text('import ltat\ny = ltat.good.x\n')      # works only once ltat.good is loaded
    r = subprocess.run([sys.executable, '-c', _FORK_IMPORTS, 'good', 'bad'], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path, env={**os.environ, 'PYTHONPATH': str(tmp_path), 'PRELOAD': ''})
    bad = eval(r.stdout.strip().splitlines()[-1])
    assert set(bad) == {'bad'} and 'good' in bad['bad'], bad

def test_top_modules_import_in_a_fresh_interpreter():
    "The entry points in a truly fresh interpreter (no library preloaded at all)"
    r = subprocess.run([sys.executable, '-c', 'import ltat.all, ltat.cli'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-1500:]
