"Fast independent checks of `ltat.theory`: Monte Carlo with fixed seeds, hand-computed limits, numerical minimisation."
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ltat.theory import (tail_errors, optimal_bias, linear_errors, reweighted_bias, sep_class_errors, class_gap,
                         reweight_head_cost, effective_number, reat_effective_number, rbl_weights, chebyshev_sum_bound,
                         boundary_decomposition, ce_feature_grad, scale_logits, zero_grad_fraction)

Phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))


def test_tail_errors_balanced_is_bayes_error():
    # r = 1: both classifiers are the unbiased one, errors Phi(-sqrt(n) eta) and Phi(-sqrt(n)(eta - eps))
    t = tail_errors(n=4, eta=0.5, eps=0.2, r=1)
    assert t['natural_clf_std'] == pytest.approx(Phi(-1.0)) == t['robust_clf_std']
    assert t['natural_clf_rob'] == pytest.approx(Phi(-0.6)) == t['robust_clf_rob']


def test_tail_errors_monte_carlo():
    # 200k tail samples; tolerance 4 binomial standard errors
    n, eta, eps, r, N = 3, 0.8, 0.3, 10, 200_000
    g = torch.Generator().manual_seed(0)
    x = -eta + torch.randn(N, n, generator=g, dtype=torch.float64)
    s = x.sum(1) / math.sqrt(n)
    t = tail_errors(n, eta, eps, r)
    for clf in ('natural', 'robust'):
        b = math.log(r) / (2 * math.sqrt(n) * (eta - (eps if clf == 'robust' else 0)))
        for kind, shift in (('std', 0.), ('rob', eps * math.sqrt(n))):
            p = ((s + shift + b) > 0).double().mean().item()
            assert abs(p - t[f'{clf}_clf_{kind}']) < 4 * math.sqrt(p * (1 - p) / N) + 1e-9


def test_corollary_1():
    for r in (1.5, 5, 100):
        t = tail_errors(2, 1., 0.5, r)
        assert t['robust_clf_rob'] > t['natural_clf_rob']
    t = tail_errors(2, 1., 0.5, 1)
    assert t['robust_clf_rob'] == t['natural_clf_rob']


def test_optimal_bias_minimises_overall_error():
    # grid search over the bias of the unit-weight classifier
    n, eta, eps, r = 2, 1., 0.4, 7
    w = torch.ones(n, dtype=torch.float64) / math.sqrt(n)
    grid = np.linspace(-1, 3, 4001)
    for e, key in ((0., 'std'), (eps, 'rob')):
        risk = [(lambda le: (r * le[f'head_{key}'] + le[f'tail_{key}']) / (r + 1))(linear_errors(w, b, eta, eps)) for b in grid]
        assert grid[int(np.argmin(risk))] == pytest.approx(optimal_bias(n, eta, r, e), abs=2e-3)
    with pytest.raises(ValueError): optimal_bias(2, 1., 5, eps=1.)


def test_reweighted_bias_verified_not_printed():
    K, rho, d, sigma, eta = 10, 1, 4, 1., 0.5
    b = reweighted_bias(K, rho, d, sigma, eta)
    assert b == pytest.approx(0.5 * math.log(rho / K) * sigma**2 / eta)
    assert reweighted_bias(K, rho, d, sigma, eta, printed=True) == pytest.approx(d * b)
    assert reweighted_bias(K, K, d, sigma, eta) == 0
    # grid minimisation of the re-weighted risk (SRAT Eq. 2) with the class errors written out by hand
    s = math.sqrt(d) * sigma
    risk = lambda b: rho * Phi((-d * eta - b) / s) + K * Phi((b - d * eta) / s)
    grid = np.linspace(-12, 2, 14001)
    assert grid[int(np.argmin([risk(v) for v in grid]))] == pytest.approx(b, abs=2e-3)


def test_srat_theorems_monotone_and_counterexample():
    for K in (2, 100):
        gaps = [class_gap(K, 4, s, 1.) for s in (0.5, 1., 2., 4.)]            # separability falls as sigma grows
        costs = [reweight_head_cost(K, 4, s, 1.) for s in (0.5, 1., 2., 4.)]
        assert np.all(np.diff(gaps) > 0) and np.all(np.diff(costs) > 0)
    # S = eta / sigma^2 is not scale free: S1 > S2 but the first distribution is the less separable one
    assert 1 / .9**2 > 10 / 3**2 and class_gap(100, 1, .9, 1.) > class_gap(100, 1, 3., 10.)


def test_effective_number_limits_and_coupons():
    assert effective_number(50, 0.) == 1.
    assert effective_number(50, 1.) == 50
    assert effective_number(50, 1 - 1e-10) == pytest.approx(50, rel=1e-6)
    rng = np.random.default_rng(0)
    N, a = 30, 40                                  # distinct coupons after a draws from N
    mc = np.mean([len(np.unique(rng.integers(0, N, a))) for _ in range(20_000)])
    assert mc == pytest.approx(reat_effective_number(N, a), abs=0.05)


def test_rbl_weights():
    n = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    w = rbl_weights(n, n)
    assert w.sum() == pytest.approx(10) and np.all(np.diff(w) > 0)
    assert w[0] == pytest.approx(0.071, abs=1e-3) and w[-1] == pytest.approx(3.56, abs=1e-2)


def test_chebyshev_sum_bound():
    lo, bal = chebyshev_sum_bound([0.6, 0.3, 0.1], [0.1, 0.3, 0.6])
    assert lo == pytest.approx(0.06 + 0.09 + 0.06) and bal == pytest.approx(1 / 3) and lo <= bal


def test_boundary_decomposition_identity():
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    pn = torch.tensor([0, 0, 1, 1, 1, 0])
    pa = torch.tensor([0, 1, 0, 1, 0, 0])
    d = boundary_decomposition(y, pn, pa)
    assert d['nat_acc'].tolist() == [0.5, 0.5] and d['rob_acc'].tolist() == [0.5, 0.]
    assert d['bdy'].tolist() == [0.25, 0.5] and d['corrected'].tolist() == [0.25, 0.]


def test_ce_feature_grad_and_logit_scale():
    g = torch.Generator().manual_seed(0)
    W, f, y = torch.randn(5, 7, generator=g), torch.randn(20, 7, generator=g), torch.randint(0, 5, (20,), generator=g)
    fg = f.clone().requires_grad_()
    ref, = torch.autograd.grad(F.cross_entropy(2. * fg @ W.T, y, reduction='sum'), fg)
    assert torch.allclose(ce_feature_grad(W, f, y, scale=2.), ref, atol=1e-5)
    class Net(torch.nn.Module):
        def __init__(self): super().__init__(); self.head = torch.nn.Linear(7, 5)
        def forward(self, x): return self.head(x)
    torch.manual_seed(0); net = Net()
    x = torch.randn(30, 7, generator=g); yy = net(x).argmax(1)
    assert torch.equal(scale_logits(net, -3)(x).argmax(1), yy)
    assert zero_grad_fraction(scale_logits(net, -4), x, yy) > 0.9       # stretched logits: gradients vanish
    assert zero_grad_fraction(net, x, yy) == 0.


def test_library_rbl_weights_agree_with_theory():
    # ltat.losses implements REAT's RBL for training; the theory chapter derives it independently
    from ltat.losses import rbl_weights as lib_rbl
    n = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    a = [2000, 1500, 1200, 1000, 800, 600, 500, 400, 300, 10]
    assert np.allclose(lib_rbl(n, a).numpy(), rbl_weights(n, a), rtol=1e-5)
