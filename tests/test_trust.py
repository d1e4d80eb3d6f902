"Evaluation sanity checks: planted gradient masking is flagged, an honest model is not."
import re
import pytest, torch, torch.nn as nn
from ltat.evaluate import robust_report
from ltat.models import CosineHead

torch.set_num_threads(1)
C = 10

class Scaled(nn.Module):
    def __init__(self, m, s): super().__init__(); self.m, self.s = m, s
    def forward(self, x): return self.m(x) * self.s

class Quantised(nn.Module):
    def __init__(self, m, k=8): super().__init__(); self.m, self.k = m, k
    def forward(self, x): return self.m(torch.round(x * self.k) / self.k)

@pytest.fixture(scope='module')
def data():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, C)).eval()
    xs = torch.rand(400, 1, 4, 4); ys = lin(xs).argmax(1)
    ys[::3] = torch.randint(0, C, (len(ys[::3]),))
    torch.manual_seed(1)
    cos = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), CosineHead(64, C, scale=1.)).eval()
    batches = lambda y: [(xs[i:i + 100], y[i:i + 100]) for i in range(0, 400, 100)]
    return {'honest': (lin, batches(ys)), 'x1e4': (Scaled(lin, 1e4).eval(), batches(ys)),
            'quantised': (Quantised(lin).eval(), batches(ys)), 'cosine1': (cos, batches(cos(xs).argmax(1)))}

def report(m, b, **kw): return robust_report(m, b, attacks=('clean', 'pgd10', 'cw10'), eps=4/255, checks='full', check_n=100, progress=False, **kw)
def anchors(r): return [re.search(r'#([\w-]+)\)$', w)[1] for w in r.warnings]

def test_honest_model_no_warning(data):
    r = report(*data['honest'])
    assert r.warnings == [] and r.summary['reliable'].all()
    assert set(r.protocol['checks']['values']) >= {'pgd_x10', 'pgd_x0.1', 'zero_grad_frac', 'pgd_eps_x8', 'pgd_steps_x5', 'pgd_restarts_5'}

@pytest.mark.parametrize('name,must', [('x1e4', 'zero-gradients'), ('quantised', 'zero-gradients'), ('cosine1', None)])
def test_planted_masking_flagged(data, name, must):
    r = report(*data[name])
    assert r.warnings, name
    if must: assert must in anchors(r), r.warnings
    assert not r.summary.loc['pgd10', 'reliable']              # the affected row is marked
    assert all('https://ltat-dev.github.io/ltat/evaluate.html#' in w for w in r.warnings)

def test_huge_logits_flagged_against_autoattack(data):
    m, b = data['x1e4']
    r = robust_report(m, b, attacks=('clean', 'pgd20', 'aa'), eps=8/255, aa_n=100, progress=False)   # cheap checks only
    assert any(w.startswith('[pgd20]') and 'pgd-above-autoattack' in w for w in r.warnings), r.warnings
    assert not r.summary.loc['pgd20', 'reliable'] and r.summary.loc['aa', 'reliable']

def test_training_mode_and_levels(data):
    m, b = data['honest']
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(b[0][0].shape[1]), m).train()      # BN: its mode changes the outputs
    r = robust_report(bn, b, attacks=('clean',), progress=False)
    assert any('training-mode' in w for w in r.warnings)
    assert all(mm.training for mm in bn.modules())                                   # every module's mode put back
    wrapper = torch.nn.Sequential(m.eval()).train()                                   # a wrapper in train mode around an eval model
    wrapper[0].eval()
    assert not any('training-mode' in w for w in robust_report(wrapper, b, attacks=('clean',), progress=False).warnings)
    assert wrapper.training and not wrapper[0].training
    assert robust_report(m, b, attacks=('clean',), checks=True, progress=False).protocol['checks'] == {'level': 'cheap'}
    assert 'checks' not in robust_report(m, b, attacks=('clean',), checks=False, progress=False).protocol
    with pytest.raises(ValueError, match="'costly'"): robust_report(m, b, checks='costly')

def test_inputs_outside_unit_interval_is_an_error(data):
    m, b = data['honest']
    with pytest.raises(ValueError, match=r'\[0, 1\]'): robust_report(m, [(b[0][0] * 255, b[0][1])], attacks=('clean',), progress=False)
