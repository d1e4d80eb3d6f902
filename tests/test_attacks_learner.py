"Properties of every attack and method, and the bad-input errors of the attack/learner/evaluation API."
import math, pytest, torch, torch.nn as nn, torch.nn.functional as F
from ltat.attacks import pgd, fgsm, mim, autoattack, cw_loss
import ltat.all   # registers every method of every chapter
from ltat.learner import adv_learner, METHODS
from ltat.evaluate import robust_report
from ltat.models import create_model, list_models
from ltat.data import lt_dls

torch.set_num_threads(1)
ATTACKS = {'fgsm': lambda m, x, y: fgsm(m, x, y, eps=8/255),
           'pgd': lambda m, x, y: pgd(m, x, y, steps=3),
           'pgd_cw': lambda m, x, y: pgd(m, x, y, steps=3, loss='cw'),
           'pgd_trainbn': lambda m, x, y: pgd(m, x, y, steps=3, bn_eval=False),
           'mim': lambda m, x, y: mim(m, x, y, steps=3)}

@pytest.fixture(scope='module')
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)

@pytest.mark.parametrize('arch', [a for a in list_models() if not a.startswith('wrn')] + ['wrn_small'])
@pytest.mark.parametrize('atk', list(ATTACKS))
def test_attack_leaves_model_as_found(arch, atk, batch):
    "Budget and range respected; mode, BN buffers and parameter grads untouched, for every model"
    torch.manual_seed(0)
    m = create_model('wrn28_10', 10, widen=1) if arch == 'wrn_small' else create_model(arch, 10)
    m.train()
    x, y = batch
    F.cross_entropy(m(x), y).backward()          # parameter grads present, as mid-step in fastai
    grads = [p.grad.clone() for p in m.parameters()]
    bufs = [b.clone() for b in m.buffers()]
    xa = ATTACKS[atk](m, x, y)
    assert (xa - x).abs().max() <= 8/255 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert m.training and all(mm.training for mm in m.modules())
    for b, b0 in zip(m.buffers(), bufs): assert torch.equal(b, b0)
    for p, g in zip(m.parameters(), grads): assert torch.equal(p.grad, g)

def test_pgd_matches_loop_reference():
    "PGD against a per-sample reference written from the update rule"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.rand(5, 1, 3, 4), torch.tensor([0, 1, 2, 0, 1])
    ref = []
    for xi, yi in zip(x, y):
        xa = xi.clone()
        for _ in range(4):
            xa.requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(m(xa[None]), yi[None]), xa)
            xa = torch.clamp(torch.clamp(xa.detach() + 0.01 * g.sign(), xi - 0.03, xi + 0.03), 0, 1)
        ref.append(xa)
    assert torch.allclose(pgd(m, x, y, eps=0.03, alpha=0.01, steps=4, init='none'), torch.stack(ref), atol=1e-6)

def test_cw_loss_by_hand():
    z = torch.tensor([[1., 4., 2.]]); y = torch.tensor([1])
    assert cw_loss(z, y).item() == pytest.approx(-(4 - 2 + 50))
    assert cw_loss(z, y, kappa=0.).item() == pytest.approx(-2.)
    assert cw_loss(z, torch.tensor([0]), kappa=0.).item() == 0.     # misclassified: hinge is 0

def test_autoattack_not_weaker_than_pgd():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()
    with torch.no_grad(): m[1].weight.mul_(5)
    x = torch.rand(40, 1, 4, 4); y = m(x).argmax(1)
    xa = autoattack(m, x, y, eps=8/255, attacks=['apgd-ce', 'apgd-t'])
    assert (xa - x).abs().max() <= 8/255 + 1e-5
    acc_aa = (m(xa).argmax(1) == y).float().mean()
    acc_pgd = (m(pgd(m, x, y, steps=20)).argmax(1) == y).float().mean()
    assert acc_aa <= acc_pgd + 1/40

# --- bad input: a ValueError naming the value, raised before any work ---
@pytest.mark.parametrize('kw,msg', [(dict(eps=0.), 'eps=0.0'), (dict(eps=1.5), 'eps=1.5'), (dict(eps=-0.1), 'eps=-0.1'),
                                    (dict(steps=0), 'steps=0'), (dict(alpha=0.), 'alpha=0.0'), (dict(init='gauss'), "'gauss'"),
                                    (dict(loss='dlr'), "'dlr'")])
def test_pgd_bad_args(kw, msg):
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=msg.replace('.', r'\.').replace('(', r'\(')): pgd(m, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), **kw)

def test_inputs_outside_unit_range():
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r'\[0, 1\]'): pgd(m, torch.rand(2, 1, 2, 2) * 255, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r'\[0, 1\]'): robust_report(m, [(torch.rand(2, 1, 2, 2) - 1, torch.tensor([0, 1]))], attacks=('clean',), progress=False)

@pytest.fixture(scope='module')
def dls():
    return lt_dls('synthetic', 10, bs=32, in_ch=1, img_size=28, n_per_class=40, n_test=10, device='cpu')

def test_unknown_method_lists_valid(dls):
    with pytest.raises(ValueError) as e: adv_learner(dls, 'small_cnn', method='madry')
    assert "'madry'" in str(e.value) and all(repr(k) in str(e.value) for k in METHODS)

def test_unknown_arch(dls):
    with pytest.raises(ValueError, match="'resnet1000'"): adv_learner(dls, 'resnet1000')

@pytest.mark.parametrize('kw,msg', [(dict(eps=2.), 'eps=2.0'), (dict(steps=0), 'steps=0'), (dict(eps=0), 'eps=0')])
def test_learner_bad_args(dls, kw, msg):
    with pytest.raises(ValueError, match=msg): adv_learner(dls, 'small_cnn', **kw)

@pytest.mark.parametrize('method', list(METHODS))
def test_every_method_trains(dls, method):
    "Every method: finite losses, every parameter receives a gradient, BN buffers untouched by the attack"
    torch.manual_seed(0)
    learn = adv_learner(dls, create_model('small_cnn', 10, in_ch=1, width=8), method=method, steps=2, lr=0.05, rob_steps=2, rob_batches=1)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])
    # one more training batch by hand: every parameter gets a gradient through the method's loss
    learn.model.train()
    x, y = dls.train.one_batch()
    learn.loss_func = learn.loss_func
    cb = [c for c in learn.cbs if type(c).__name__.endswith('Train')]
    if cb:
        cb = cb[0]; cb.before_train(); cb.x_nat = x      # the method's per-epoch set-up (e.g. REAT's feature hook)
        xa = cb.craft(x, y); learn.xb = (xa,)              # as `before_batch` writes it
        loss = cb.train_loss(learn.model(xa), y)
        cb.after_train()
    else: loss = F.cross_entropy(learn.model(x), y)
    learn.model.zero_grad(); loss.backward()
    for n, p in learn.model.named_parameters(): assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
