"Smoke and property tests of the MART, AWP and AT-BSL methods on a tiny long-tailed CPU problem."
import copy, math, pytest, torch, torch.nn.functional as F
from fastai.callback.core import Callback, CancelBatchException, CancelStepException, CancelFitException
from ltat.data import lt_dls
from ltat.models import create_model
from ltat.learner import adv_learner, AdvTrain, METHODS
import ltat.all   # registers every method
from ltat.losses import bsl_loss
from ltat.baselines import AWPTrain, awp_params, calc_awp, add_into_weights

torch.set_num_threads(1)
CASES = {'mart': {}, 'awp': {}, 'awp_trades': dict(variant='trades', warmup=0), 'at_bsl': {}}

@pytest.fixture(scope='module')
def dls():
    return lt_dls('synthetic', 10, bs=16, in_ch=1, img_size=12, n_per_class=12, n_test=2, augment=False, device='cpu')

def tiny(seed=0):
    torch.manual_seed(seed); return create_model('small_cnn', 10, in_ch=1, width=4, hidden=8)

def method_cb(learn): return learn.cbs.filter(lambda c: isinstance(c, AdvTrain))[0]

class GradCheck(Callback):
    "Records, after each training backward, whether every parameter has a finite, non-zero gradient"
    order, run_valid = 100, False
    def before_fit(self): self.ok = []
    def after_backward(self):
        self.ok.append(all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                           for p in self.learn.model.parameters()))

def test_methods_registered():
    for m in ('mart', 'awp', 'at_bsl'): assert m in METHODS

@pytest.mark.parametrize('case', list(CASES))
def test_method_trains(case, dls):
    "Finite training loss, and every parameter receives a gradient, for every method"
    gc = GradCheck()
    l = adv_learner(dls, tiny(), method=case.split('_trades')[0], robust_metric=False, steps=2, cbs=gc, **CASES[case])
    with l.no_bar(), l.no_logging(): l.fit(1, 0.05)
    assert all(math.isfinite(v.item()) for v in l.recorder.losses)
    assert gc.ok and all(gc.ok)

@pytest.mark.parametrize('case', list(CASES))
def test_attack_leaves_bn_buffers(case, dls):
    "The method's training attack (and AWP's proxy step) leave the model's BN buffers, mode and weights as found"
    l = adv_learner(dls, tiny(), method=case.split('_trades')[0], robust_metric=False, steps=3, **CASES[case])
    cb, m = method_cb(l), l.model.train()
    x, y = dls.one_batch(); cb.x_nat = x
    bufs, ws = [b.clone() for b in m.buffers()], [p.detach().clone() for p in m.parameters()]
    xa = cb.craft(x, y)
    if isinstance(cb, AWPTrain):
        proxy = copy.deepcopy(m)
        calc_awp(m, proxy, torch.optim.SGD(proxy.parameters(), lr=0.01), lambda mm: cb.objective(mm, xa, y))
    assert m.training and (xa - x).abs().max() <= 8/255 + 1e-6
    for b, b0 in zip(m.buffers(), bufs): assert torch.equal(b, b0)
    for p, p0 in zip(m.parameters(), ws): assert torch.equal(p, p0)

def test_awp_perturbation_by_hand():
    "v_l = ||theta_l|| g_l/||g_l|| for a linear layer (proxy SGD step on -CE), bias untouched"
    torch.manual_seed(1)
    lin = torch.nn.Linear(4, 3); x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    proxy = copy.deepcopy(lin)
    v = calc_awp(lin, proxy, torch.optim.SGD(proxy.parameters(), lr=0.01), lambda m: F.cross_entropy(m(x), y))
    g = (F.softmax(x @ lin.weight.T + lin.bias, 1) - F.one_hot(y, 3)).T @ x / 5
    assert list(v) == ['weight']
    assert torch.allclose(v['weight'], lin.weight.norm() * g / g.norm(), atol=1e-6)

def test_awp_params_selection():
    m = tiny()
    names = list(awp_params(m))
    assert names and all('weight' in n and dict(m.named_parameters())[n].dim() >= 2 for n in names)
    assert 'body.convs.2.weight' not in names          # BatchNorm weight (1-dim)

@pytest.mark.parametrize('event,exc', [('after_pred', CancelBatchException), ('after_loss', CancelBatchException),
                                       ('before_step', CancelStepException), ('after_backward', CancelFitException)])
def test_awp_restores_on_cancel(event, exc, dls):
    "Weights come back exactly when the batch, the step or the fit is cancelled with the perturbation applied"
    class Cancel(Callback):
        def __call__(self, name):
            if name == event and self.learn.training: raise exc()
            return super().__call__(name)
    m = tiny(); w0 = [p.detach().clone() for p in m.parameters()]
    l = adv_learner(dls, m, method='awp', robust_metric=False, steps=2, cbs=Cancel())
    with l.no_bar(), l.no_logging(): l.fit(1, 0.1)
    for p, q in zip(m.parameters(), w0): assert torch.equal(p, q)
    assert method_cb(l).diff is None

def test_awp_step_equals_reference(dls):
    "A full AWP step lands where perturb / step / restore by hand lands (plain SGD, wd on every parameter)"
    x, y = dls.one_batch()
    from fastai.data.core import DataLoaders
    from ltat.data import TensorDS, TensorDL
    xb = (x * 255).round().to(torch.uint8)
    one = DataLoaders(TensorDL(TensorDS(xb, y), bs=len(y)), TensorDL(TensorDS(xb, y), bs=len(y)), device='cpu')
    x = xb.float() / 255
    m0 = tiny(); lr, wd, gamma = 0.1, 5e-4, 0.01
    from ltat.learner import default_opt
    l = adv_learner(one, copy.deepcopy(m0), method='awp', robust_metric=False, steps=2, init='none', opt_func=default_opt(wd), wd_bn_bias=True)
    with l.no_bar(), l.no_logging(): l.fit(1, lr)
    from ltat.attacks import pgd
    ref = copy.deepcopy(m0); xa = pgd(ref, x, y, steps=2, init='none', bn_eval=False)   # AT-AWP crafts in train mode
    proxy = copy.deepcopy(ref)
    v = calc_awp(ref, proxy, torch.optim.SGD(proxy.parameters(), lr=0.01), lambda mm: F.cross_entropy(mm(xa), y))
    add_into_weights(ref, v, gamma); ref.train(); F.cross_entropy(ref(xa), y).backward()
    with torch.no_grad():
        for p in ref.parameters(): p -= lr * (p.grad + wd * p)
    add_into_weights(ref, v, -gamma)
    for p, q in zip(l.model.parameters(), ref.parameters()): assert torch.allclose(p, q, atol=1e-6)

def test_awp_model_ascent_two_steps_by_hand(dls):
    """`ascent='model'` (RobustLT's AWP) over two batches, against the formulas written out: the ascent is one step of the
    learner's SGD (momentum 0.9, L2 decay) on -L, whose momentum buffer is then put back, so the second batch's ascent and
    step see the first batch's descent momentum only"""
    from fastai.data.core import DataLoaders
    from ltat.data import TensorDS, TensorDL
    from ltat.learner import default_opt
    from ltat.attacks import pgd
    x, y = dls.one_batch()
    xb = (x * 255).round().to(torch.uint8); x = xb.float() / 255
    two = DataLoaders(TensorDL(TensorDS(xb, y), bs=len(y) // 2), TensorDL(TensorDS(xb, y), bs=len(y)), device='cpu')
    m0 = tiny(); lr, wd, gamma, mu = 0.1, 5e-4, 0.005, 0.9
    l = adv_learner(two, copy.deepcopy(m0), method='awp', ascent='model', gamma=gamma, robust_metric=False, steps=2, init='none',
                    opt_func=default_opt(wd), wd_bn_bias=True)
    with l.no_bar(), l.no_logging(): l.fit(1, lr)
    ref = copy.deepcopy(m0).train(); ps = list(ref.parameters()); names = [n for n, _ in ref.named_parameters()]
    pert = {n for n in awp_params(ref)}
    mom = [torch.zeros_like(p) for p in ps]
    def grads(xa, yy):
        ref.zero_grad(); F.cross_entropy(ref(xa), yy).backward(); return [p.grad.detach().clone() for p in ps]
    h = len(y) // 2
    for xs, ys in ((x[:h], y[:h]), (x[h:], y[h:])):
        xa = pgd(ref, xs, ys, steps=2, init='none', bn_eval=False)
        g = grads(xa, ys)
        theta = [p.detach().clone() for p in ps]
        d = [-lr * (mu * m + (-gi + wd * t)) for m, gi, t in zip(mom, g, theta)]          # the ascent step on -L
        v = {n: t.norm() / (di.norm() + 1e-20) * di for n, t, di in zip(names, theta, d) if n in pert}
        with torch.no_grad():
            for n, p in zip(names, ps):
                if n in v: p += gamma * v[n]
        g2 = grads(xa, ys)
        with torch.no_grad():
            for i, (n, p) in enumerate(zip(names, ps)):
                mom[i] = mu * mom[i] + (g2[i] + wd * p)                                      # the descent step at theta + gamma v
                p -= lr * mom[i]
                if n in v: p -= gamma * v[n]
    for (n, p), q in zip(l.model.named_parameters(), ps): assert torch.allclose(p, q, atol=1e-5), n
    proxy = adv_learner(two, copy.deepcopy(m0), method='awp', gamma=gamma, robust_metric=False, steps=2, init='none',
                        opt_func=default_opt(wd), wd_bn_bias=True)
    with proxy.no_bar(), proxy.no_logging(): proxy.fit(1, lr)
    assert max((p - q).abs().max().item() for p, q in zip(l.model.parameters(), proxy.model.parameters())) > 1e-5   # not AWP's proxy

def test_post_step_counts_and_bad_values(dls):
    "`post_step` runs its passes after every step (REAT's 'post_step' count sees each training AE once); bad values are refused"
    class Seen(Callback):
        order, run_valid = 100, False
        def before_fit(self): self.n = 0
        def after_step(self): self.n += len(self.learn.yb[0])
    l = adv_learner(dls, tiny(), method='reat', robust_metric=False, steps=1, post_step=('adv', 'nat'), count_mode='post_step', cbs=Seen())
    with l.no_bar(), l.no_logging(): l.fit(1, 0.05)
    assert int(method_cb(l).ae_counts.sum()) == l.seen.n
    with pytest.raises(ValueError, match='post_step'): adv_learner(dls, tiny(), method='reat', count_mode='post_step')
    with pytest.raises(ValueError, match="'x'"): adv_learner(dls, tiny(), post_step=('x',))

def test_awp_variants_and_bad_variant():
    "The official scripts' values (AT_AWP/train_cifar10.py, trades_AWP/train_trades_cifar.py)"
    a = AWPTrain()
    assert (a.gamma, a.init, a.warmup, a.bn_eval, a.awp_lr) == (0.01, 'uniform', 0, False, 0.01)
    t = AWPTrain(variant='trades')
    assert (t.gamma, t.init, t.warmup, t.bn_eval, t.awp_lr) == (0.005, 'normal', 9, True, 0.1)
    assert AWPTrain(bn_eval=True).bn_eval is True and AWPTrain(variant='trades', warmup=0).warmup == 0
    with pytest.raises(ValueError, match="'trades'"): AWPTrain(variant='sam')
    with pytest.raises(ValueError, match='gamma'): AWPTrain(gamma=-1.)
    with pytest.raises(ValueError, match='warmup'): AWPTrain(warmup=-1)

def _attack_modes(dls, method, **kw):
    "BN mode of every forward pass of the method's attack (passes with frozen weights); buffers and mode checked as restored"
    l = adv_learner(dls, tiny(), method=method, robust_metric=False, steps=2, **kw)
    cb, m = method_cb(l), l.model.train()
    x, y = dls.one_batch(); cb.x_nat = x
    modes = []
    h = m.register_forward_pre_hook(lambda mod, inp: modes.append(mod.training) if not any(p.requires_grad for p in mod.parameters()) else None)
    bufs = [b.clone() for b in m.buffers()]
    try: cb.craft(x, y)
    finally: h.remove()
    assert m.training and all(torch.equal(b, b0) for b, b0 in zip(m.buffers(), bufs))
    return set(modes)

@pytest.mark.parametrize('method,kw,train_mode', [('awp', {}, True), ('awp', dict(bn_eval=True), False),
                                                   ('awp', dict(variant='trades'), False), ('mart', {}, False), ('trades', {}, False)])
def test_attack_bn_mode_as_official(method, kw, train_mode, dls):
    "AT-AWP's official script crafts in train mode (no model.eval() in its training loop); TRADES-AWP, MART, TRADES in eval mode"
    assert _attack_modes(dls, method, **kw) == {train_mode}

def test_trades_awp_warmup_as_official(dls):
    "trades_AWP/train_trades_cifar.py perturbs the weights in epoch e (counted from 1) when e >= --awp-warmup = 10"
    seen = []
    class Spy(Callback):
        order, run_valid = AWPTrain.order + 1, False
        def before_epoch(self): self.first = True
        def before_batch(self):
            if self.first: seen.append(method_cb(self.learn).diff is not None); self.first = False
    l = adv_learner(dls, tiny(), method='awp', variant='trades', robust_metric=False, steps=1, cbs=Spy())
    with l.no_bar(), l.no_logging(): l.fit(10, 0.05)
    assert seen == [e >= 10 for e in range(1, 11)]

def test_at_bsl_loss_is_ce_on_shifted_logits(dls):
    l = adv_learner(dls, tiny(), method='at_bsl', robust_metric=False, steps=1)
    cb = method_cb(l); z = torch.randn(6, 10); y = torch.randint(0, 10, (6,))
    n = torch.tensor(dls.counts, dtype=torch.float)
    assert torch.allclose(cb.train_loss(z, y), F.cross_entropy(z + n.log(), y), atol=1e-6)
    assert cb.init == 'normal'
