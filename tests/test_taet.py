"""TAET: the hierarchical equalisation loss (hand value, an independent loop), the two stages, balanced robustness."""
import math
import pytest
import torch, torch.nn as nn, torch.nn.functional as F
from fastai.callback.core import Callback
from ltat.losses import taet_loss
from ltat.data import lt_dls, lt_counts
from ltat.models import create_model
from ltat.learner import adv_learner, METHODS, check_registered
from ltat.taet import TAETTrain, lt_test_indices, balanced_robustness

torch.set_num_threads(1)

def _loop(z, y, C, a, b, g):
    "HARL written as a loop over classes, from the formula"
    l = [F.cross_entropy(z[i:i+1].double(), y[i:i+1]).item() for i in range(len(y))]
    L = []
    for c in range(C):
        idx = [i for i in range(len(y)) if y[i] == c]
        L.append(sum(l[i] for i in idx) / len(idx) if idx else 0.)
    m = sum(L) / C; s = sum(L)
    return a * m + b * sum((v - m) ** 2 for v in L) / C + g * sum((v / s) ** 2 for v in L)

def test_hand_value():
    z = torch.tensor([[0., 0., 0.], [math.log(2), 0., 0.], [math.log(2), 0., 0.]]); y = torch.tensor([0, 0, 1])
    L = [math.log(6) / 2, math.log(4), 0.]; m = sum(L) / 3
    want = 0.1 * m + 0.1 * sum((v - m) ** 2 for v in L) / 3 + 0.1 * sum((v / sum(L)) ** 2 for v in L)
    assert abs(taet_loss(z, y, 3).item() - want) < 1e-6

@pytest.mark.parametrize('seed', range(4))
def test_against_loop(seed):
    g = torch.Generator().manual_seed(seed)
    z, y = torch.randn(12, 6, generator=g) * 3, torch.randint(0, 4, (12,), generator=g)   # classes 4, 5 absent
    for a, b, gm in ((0.1, 0.1, 0.1), (1., 0., 0.), (0., 2., 0.), (0., 0., 3.)):
        assert abs(taet_loss(z, y, 6, a, b, gm).item() - _loop(z, y, 6, a, b, gm)) < 1e-5

def test_registered():
    assert METHODS['taet'] is TAETTrain
    assert check_registered('taet', METHODS, 'method') == 'taet'

class _Peek(Callback):
    order = TAETTrain.order + 1
    def before_fit(self): self.rows = []
    def after_loss(self):
        if not self.training: return
        cb = self.learn.cbs.filter(lambda c: isinstance(c, TAETTrain))[0]
        z, y = self.learn.pred.detach(), self.learn.yb[0]
        nat = self.epoch < 2
        want = F.cross_entropy(z, y) if nat else taet_loss(z, y, 10)
        self.rows.append((nat, (self.learn.xb[0] - cb.x_nat).abs().max().item(), abs(self.learn.loss.item() - want.item())))

def test_two_stages():
    dls = lt_dls('synthetic', 10, bs=32, in_ch=1, img_size=8, n_per_class=30, n_test=10, augment=False, device='cpu')
    peek = _Peek(); torch.manual_seed(0)
    learn = adv_learner(dls, create_model('small_cnn', 10, in_ch=1, width=4, hidden=16), method='taet', ce_epochs=2, eps=0.031,
                        alpha=0.003, robust_metric=False, cbs=peek)
    cb = learn.cbs.filter(lambda c: isinstance(c, TAETTrain))[0]
    assert cb.init == 'normal' and cb.bn_eval and (cb.taet_alpha, cb.taet_beta, cb.taet_gamma) == (0.1, 0.1, 0.1)
    with learn.no_bar(), learn.no_logging(): learn.fit(3, 0.05)
    assert {nat for nat, _, _ in peek.rows} == {True, False}
    for nat, d, err in peek.rows:
        assert err < 1e-5
        assert d == 0 if nat else 0 < d <= 0.031 + 1e-6

def test_balanced_robustness_and_lt_test_set():
    y = torch.arange(10).repeat_interleave(50)
    idx = lt_test_indices(y, ir=10)
    assert torch.bincount(y[idx]).tolist() == lt_counts(50, 10, 10)
    class Const(nn.Module):                      # always class 3: per-class accuracy 1 for class 3, 0 elsewhere
        def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(1))
        def forward(self, x): return F.one_hot(torch.full((len(x),), 3), 10).float() * 5 + self.w * x.flatten(1)[:, :10]
    br, per = balanced_robustness(Const(), torch.rand(len(idx), 1, 4, 4), y[idx], steps=2)
    assert abs(br - 0.1) < 1e-6 and per.tolist() == [0.] * 3 + [1.] + [0.] * 6
