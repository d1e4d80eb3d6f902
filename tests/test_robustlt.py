"""RobustLT: class-wise budgets (hand values, defining properties), the warm-up, per-sample PGD budgets, and the
`class_eps='robustlt'` option reaching the attack of every method while evaluation keeps the uniform budget."""
import math
import numpy as np
import pytest
import torch, torch.nn as nn
from fastai.callback.core import Callback
from ltat.robustlt import class_eps, budget_scale, sample_budgets
from ltat.attacks import pgd, mim
from ltat.data import lt_dls
from ltat.models import create_model
from ltat.learner import adv_learner, AdvTrain, METHODS
import ltat.baselines, ltat.at_bsl, ltat.reat, ltat.robal, ltat.srat, ltat.self_distill, ltat.taet  # register every method

torch.set_num_threads(1)
C10_IR50 = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]

def test_counts_of_cifar10_lt_ir50():
    from ltat.data import lt_counts
    assert lt_counts(5000, 10, 50) == C10_IR50
    assert [int(5000 * 50 ** (-c / 9)) for c in range(10)] == C10_IR50

def test_budgets_by_hand_cifar10_lt_ir50():
    # written out independently in numpy (float64): r_c, tau, eps_c
    n = np.array(C10_IR50, dtype=np.float64); eps, a = 8 / 255, 0.3
    r = np.sqrt(np.log(n.max() / n)); tau = a / np.sum(n / n.sum() * r)
    want = (1 - a) * eps + tau * r * eps
    got = class_eps(C10_IR50, eps, a).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert abs(got[0] - 0.7 * eps) < 1e-8                          # the head class gets (1-a) eps
    assert abs(np.sum(n / n.sum() * got) - eps) < 1e-8             # frequency-weighted mean = eps
    np.testing.assert_allclose(got * 255, [5.6, 8.026, 9.031, 9.802, 10.453, 11.027, 11.543, 12.021, 12.464, 12.878], atol=5e-4)

@pytest.mark.parametrize('seed', range(5))
def test_budget_properties_random_counts(seed):
    g = np.random.default_rng(seed)
    n = g.integers(1, 1000, size=int(g.integers(2, 30)))
    a = float(g.uniform(0, 1)); eps = float(g.uniform(1, 16)) / 255
    e = class_eps(n, eps, a).double().numpy()
    if n.min() == n.max(): np.testing.assert_allclose(e, eps); return
    np.testing.assert_allclose(np.sum(n / n.sum() * e), eps, rtol=1e-6)
    np.testing.assert_allclose(e[n == n.max()], (1 - a) * eps, rtol=1e-6)
    order = np.argsort(-n, kind='stable')                          # fewer images, never a smaller budget
    assert np.all(np.diff(e[order]) >= -1e-9)

def test_bad_arguments():
    with pytest.raises(ValueError, match='positive'): class_eps([3, 0], 8 / 255)
    with pytest.raises(ValueError, match='robustlt_alpha'): class_eps([3, 1], 8 / 255, alpha=-0.1)
    with pytest.raises(ValueError, match='eps'): class_eps([3, 1], 0.)
    with pytest.raises(ValueError, match='class_eps'): AdvTrain(class_eps='robust')

def test_warmup():
    assert [budget_scale(e, 100, 0.8) for e in (1, 2, 41, 80, 81, 100)] == [0., 1 / 80, 0.5, 79 / 80, 1., 1.]
    assert budget_scale(1, 10, 0.) == 1.
    e, a = sample_budgets(torch.tensor([1., 2., 3.]), torch.tensor([2, 0]), 2., 0.5, 0.5)
    assert e.tolist() == [1.5, 0.5] and a.tolist() == [0.375, 0.125]

def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10)).eval()

def test_per_sample_pgd_equals_one_sample_at_a_time():
    m, x, y = _net(), torch.rand(5, 1, 4, 4), torch.randint(0, 10, (5,))
    e = torch.tensor([1., 3., 5., 8., 13.]) / 255
    got = pgd(m, x, y, eps=e, alpha=e / 3, steps=4, init='none')
    for i in range(5):
        ref = pgd(m, x[i:i+1], y[i:i+1], eps=float(e[i]), alpha=float(e[i]) / 3, steps=4, init='none')
        torch.testing.assert_close(got[i:i+1], ref, rtol=0, atol=1e-6)
    got_m = mim(m, x, y, eps=e, alpha=e / 3, steps=4, init='none')
    assert ((got_m - x).abs().flatten(1).amax(1) <= e + 1e-6).all()
    # a broadcastable (B,1,1,1) tensor is the same as (B,)
    torch.testing.assert_close(pgd(m, x, y, eps=e.view(-1, 1, 1, 1), alpha=e.view(-1, 1, 1, 1) / 3, steps=4, init='none'), got)

class _MaxDist(Callback):
    "Largest L-inf distance of the crafted examples, per class, over the fit"
    order = AdvTrain.order + 1
    def before_fit(self): self.d = torch.zeros(10)
    def before_batch(self):
        if not self.training: return
        cb = self.learn.cbs.filter(lambda c: isinstance(c, AdvTrain))[0]
        dist = (self.learn.xb[0] - cb.x_nat).abs().flatten(1).amax(1)
        for c in self.learn.yb[0].unique(): self.d[c] = max(self.d[c], dist[self.learn.yb[0] == c].max())

METHOD_KW = {'pgd_at': {}, 'trades': {}, 'mart': {}, 'awp': {}, 'at_bsl': {}, 'reat': {}, 'robal': {}, 'srat': {},
             'self_distill': dict(teacher_epochs=1), 'pgd_at+bsl': dict(loss='bsl'), 'taet': dict(ce_epochs=0)}

@pytest.mark.parametrize('name', list(METHOD_KW))
def test_class_budgets_reach_every_method(name):
    "Every crafted example lies in its class's ball eps_c (the head class below eps, the tail above), and reaches it"
    dls = lt_dls('synthetic', 10, bs=32, in_ch=1, img_size=8, n_per_class=40, n_test=10, augment=False, device='cpu')
    method = name.split('+')[0]
    arch_kw = dict(head='cosine', scale=1.) if method == 'robal' else {}
    rec = _MaxDist()
    torch.manual_seed(0)
    learn = adv_learner(dls, create_model('small_cnn', 10, in_ch=1, width=4, hidden=16, **arch_kw), method=method, steps=4,
                        alpha=4 / 255, robust_metric=True, rob_steps=1, class_eps='robustlt', robustlt_beta=0., cbs=rec,
                        **METHOD_KW[name])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.01)
    ec = class_eps(dls.counts, 8 / 255)
    seen = rec.d > 0
    assert seen[0] and seen[-1]
    torch.testing.assert_close(rec.d[seen], ec[seen], rtol=0, atol=1e-5)     # 4 steps of eps_c/2: every class reaches its boundary
    assert rec.d[0] < 8 / 255 < rec.d[-1]
    assert learn.metrics[1].eps == 8 / 255                                   # evaluation keeps the uniform budget

def test_warmup_during_training():
    dls = lt_dls('synthetic', 10, bs=32, in_ch=1, img_size=8, n_per_class=30, n_test=10, augment=False, device='cpu')
    rec = _MaxDist()
    torch.manual_seed(0)
    learn = adv_learner(dls, create_model('small_cnn', 10, in_ch=1, width=4, hidden=16), steps=4, alpha=4 / 255, robust_metric=False,
                        class_eps='robustlt', cbs=rec)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.01)              # one epoch of one: the warm-up factor is 0
    assert rec.d.max() == 0
