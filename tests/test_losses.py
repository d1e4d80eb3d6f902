"Each loss of `ltat.losses` against an independent computation (loops, hand values, library formulas)."
import math
import pytest, torch, torch.nn.functional as F
from ltat.losses import (bsl_loss, logit_adjust, cb_weights, focal_loss, sigmoid_focal_loss, ldam_loss, ldam_margins, cdt_logits,
                         mart_loss, robal_loss, rbl_weights, tail_reg, supcon_loss, igdm_loss, kl_div, LT_LOSSES, make_lt_loss)

torch.set_num_threads(1)
C50 = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]

@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 10, generator=g, dtype=torch.float64), torch.randint(0, 10, (12,), generator=g)

def _ce(z, y, i): return -F.log_softmax(z[i], 0)[y[i]]

def test_bsl_and_la(batch):
    z, y = batch
    n = torch.tensor(C50, dtype=torch.float64)
    ref = sum(-(z[i, y[i]] + n[y[i]].log()) + torch.logsumexp(z[i] + n.log(), 0) for i in range(len(y))) / len(y)
    assert torch.allclose(bsl_loss(z, y, C50), ref, atol=1e-6)
    assert torch.allclose(logit_adjust(z, C50), z - (n / n.sum()).log(), atol=1e-5)
    assert torch.allclose(bsl_loss(z, y, C50, tau=0.), F.cross_entropy(z, y))

def test_cb_weights():
    w = cb_weights([5000] * 5 + [50] * 5)
    assert abs(w.sum().item() - 10) < 1e-4
    assert 78.5 < (w[-1] / w[0]).item() < 79.5          # SRAT's "≈78" for Step-100 (SRAT paper, §4)
    assert torch.allclose(cb_weights(C50, 0.), torch.ones(10))
    with pytest.raises(ValueError, match='beta'): cb_weights(C50, 1.)

def test_focals(batch):
    z, y = batch
    ref = sum((1 - torch.exp(-_ce(z, y, i))) * _ce(z, y, i) for i in range(len(y))) / len(y)
    assert torch.allclose(focal_loss(z, y), ref, atol=1e-6)
    oh = F.one_hot(y, 10).double()
    pt = torch.where(oh.bool(), torch.sigmoid(z), 1 - torch.sigmoid(z))
    assert torch.allclose(sigmoid_focal_loss(z, y), (-(1 - pt) ** 2 * pt.log()).sum() / len(y), atol=1e-6)

def test_ldam_cdt(batch):
    z, y = batch
    m = 0.5 * torch.tensor(C50, dtype=torch.float64) ** -0.25 / 100 ** -0.25
    assert torch.allclose(ldam_margins(C50).double(), m, atol=1e-6)
    zm = z.clone()
    for i in range(len(y)): zm[i, y[i]] -= m[y[i]]
    assert torch.allclose(ldam_loss(z, y, C50), F.cross_entropy(30 * zm, y), atol=1e-5)
    assert torch.allclose(cdt_logits(z, C50, 0.3), z / (5000 / torch.tensor(C50, dtype=torch.float64)) ** 0.3, atol=1e-6)

def test_mart(batch):
    zn, y = batch; za = zn.flip(0) * 2
    pa, pn = F.softmax(za, 1), F.softmax(zn, 1)
    tot = 0.
    for i in range(len(y)):
        wrong = max((k for k in range(10) if k != y[i]), key=lambda k: pa[i, k])
        tot += _ce(za, y, i) - torch.log(1.0001 - pa[i, wrong] + 1e-12)
        tot += 6 * (pn[i] * (pn[i].log() - (pa[i] + 1e-12).log())).sum() * (1.0000001 - pn[i, y[i]])
    assert torch.allclose(mart_loss(zn, za, y), tot / len(y), atol=1e-5)

def test_robal_eq10(batch):
    _, y = batch
    cos = torch.rand(12, 10, dtype=torch.float64) * 2 - 1
    n = torch.tensor(C50, dtype=torch.float64); s, m0, tb, tm = 10., 0.1, 1.5, 0.3
    ref = 0.
    for j in range(len(y)):
        t = int(y[j])
        ref += torch.log(1 + sum(torch.exp(s * (cos[j, i] - cos[j, t] + tb / s * torch.log(n[i] / n[t]) + tm / s * torch.log(n[t] / n.min()) + m0))
                                 for i in range(10) if i != t))
    assert torch.allclose(robal_loss(cos, y, C50, s, m0, tb, tm).double(), ref / len(y), atol=1e-5)

def test_rbl():
    w = rbl_weights(C50, C50)
    assert torch.allclose(w, torch.tensor([0.071, 0.110, 0.170, 0.263, 0.407, 0.629, 0.970, 1.50, 2.32, 3.56]), atol=6e-3)
    w0 = rbl_weights([5, 5], [3, 0])           # a class without predicted AEs takes (almost) all the weight, as in the code
    assert w0[1] > 1.99
    with pytest.raises(ValueError, match='ae_counts'): rbl_weights([5, 5], [1])

def test_tail_reg_code_elementmean():
    g = torch.Generator().manual_seed(1)
    f, y = torch.randn(10, 7, generator=g, requires_grad=True), torch.tensor([9, 0, 8, 7, 1, 9, 2, 3, 7, 5])
    n = torch.tensor(C50, dtype=torch.float); w = (n.sum() / n).sqrt()
    anchors = [i for i in range(10) if y[i] >= 7]
    ref = torch.zeros(10)
    for i in anchors:      # REAT's loop, KLDivLoss 'mean' written as an element mean
        p = F.softmax(f[i], 0).detach()
        S = torch.stack([(p * (p.log() - F.log_softmax(f[j], 0))) for j in range(10)]).mean()
        ref = ref + S * torch.tensor([(-1. if y[j] == y[i] else 1.) * (w[y[i]] + w[y[j]]) for j in range(10)])
    out = tail_reg(f, y, C50)
    assert torch.allclose(out, ref.mean() / len(anchors), atol=1e-6)
    out.backward(); assert f.grad is not None and torch.isfinite(f.grad).all()
    assert torch.allclose(tail_reg(f, y, C50, 'paper'), -tail_reg(f, y, C50, 'pair'))

def test_supcon_and_igdm():
    g = torch.Generator().manual_seed(2)
    f, y = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 1, 2, 3])
    z = F.normalize(f, dim=1); tau = 0.2; tot, k = 0., 0
    for i in range(7):
        P = [p for p in range(7) if p != i and y[p] == y[i]]
        if not P: continue
        lse = torch.logsumexp(torch.stack([z[i] @ z[a] / tau for a in range(7) if a != i]), 0)
        tot += -sum(z[i] @ z[p] / tau - lse for p in P) / len(P); k += 1
    assert torch.allclose(supcon_loss(f, y, tau), tot / k)
    s1, s2, t1, t2 = torch.randn(4, 5, 3).unbind(0)
    d_t, d_s = F.softmax(t1 - t2, 1), F.softmax(s1 - s2, 1)
    assert torch.allclose(igdm_loss(s1, s2, t1, t2), (d_t * (d_t.log() - d_s.log())).sum(1).mean(), atol=1e-6)

@pytest.mark.parametrize('name', sorted(LT_LOSSES))
def test_registry_finite_grad(name, batch):
    z, y = batch
    z = z.float().requires_grad_(True)
    l = make_lt_loss(name, C50)(z, y)
    l.backward()
    assert torch.isfinite(l) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0

def test_registry_errors():
    with pytest.raises(ValueError, match="'bsl'"): make_lt_loss('bls', C50)
    with pytest.raises(ValueError, match='counts'): make_lt_loss('ldam', None)
    with pytest.raises(ValueError, match='counts'): make_lt_loss('bsl', [10, 0])

def test_on_device_copies_once():
    "Class statistics move to the logits' device/dtype once; later batches reuse the copy (no transfer per batch)"
    from ltat.losses import on_device, _counts
    n = torch.tensor([100., 10., 1.])
    z = torch.zeros(2, 3, dtype=torch.float64)
    a, b = on_device(n, z), on_device(n, z)
    assert a is b and a.dtype == torch.float64 and torch.equal(a, n.double())
    assert on_device(n, torch.zeros(2, 3)) is n                      # already there: no copy at all
    assert torch.equal(_counts(n, z), n.double())
    with pytest.raises(ValueError, match='positive'): _counts([10, 0], z)   # lists are still validated
