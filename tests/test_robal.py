"RoBal: training, loss, inference wrapper, presets and learning-rate schedule on tiny CPU models."
import math, pytest, torch, torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.schedule import ParamScheduler
from ltat.data import lt_dls
from ltat.models import create_model
from ltat.attacks import pgd
from ltat.losses import robal_loss
from ltat.learner import adv_learner, AdvTrain
from ltat.robal import (RoBalTrain, ROBAL_PRESETS, robal_preset, robal_inference, robal_eval_model,
                        robal_lr_factors, robal_lr_schedule)

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def dls():
    return lt_dls('synthetic', 10, bs=16, in_ch=1, img_size=12, n_per_class=12, n_test=2, augment=False, device='cpu')

def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return create_model('small_cnn', 10, in_ch=1, width=4, hidden=8, head='cosine', scale=1., **kw)

def method_cb(learn): return learn.cbs.filter(lambda c: isinstance(c, AdvTrain))[0]

class GradCheck(Callback):
    order, run_valid = 100, False
    def before_fit(self): self.ok = []
    def after_backward(self):
        self.ok.append(all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                           for p in self.learn.model.parameters()))

@pytest.mark.parametrize('preset', list(ROBAL_PRESETS))
def test_robal_trains(preset, dls):
    "Finite loss and a gradient for every parameter, under every preset"
    gc = GradCheck()
    l = adv_learner(dls, tiny(gamma=ROBAL_PRESETS[preset]['gamma']), method='robal', preset=preset,
                    robust_metric=False, steps=2, cbs=gc)
    with l.no_bar(), l.no_logging(): l.fit(1, 0.05)
    assert all(math.isfinite(v.item()) for v in l.recorder.losses)
    assert gc.ok and all(gc.ok)

def test_robal_loss_matches_independent(dls):
    l = adv_learner(dls, tiny(), method='robal', preset='cifar10-r', robust_metric=False, steps=2)
    cb = method_cb(l); x, y = dls.one_batch(); cb.x_nat = x
    m = l.model.train()
    bufs = [b.clone() for b in m.buffers()]
    xa = cb.craft(x, y)
    for b, b0 in zip(m.buffers(), bufs): assert torch.equal(b, b0)          # attack leaves BN buffers alone
    assert cb.init == 'onesided' and (xa - x).abs().max() <= 8/255 + 1e-6
    with torch.no_grad():
        ca, cn = m(xa), m(x)
        pn, pa = cn.softmax(1), ca.softmax(1)
        ref = robal_loss(ca, y, dls.counts, 10., 0.1, 1.5, 0.3) + 6 * (pn * (pn.log() - pa.log())).sum(1).mean()
        assert torch.allclose(cb.train_loss(ca, y), ref, atol=1e-5)

def test_beta_nat_adds_clean_ce(dls):
    l = adv_learner(dls, tiny(), method='robal', beta_nat=0.5, beta_reg=0., robust_metric=False, steps=1)
    cb = method_cb(l); x, y = dls.one_batch(); cb.x_nat = x
    with torch.no_grad():
        ca = l.model(x + 0.01)
        ref = robal_loss(ca, y, dls.counts) + 0.5 * F.cross_entropy(l.model(x), y)
        assert torch.allclose(cb.train_loss(ca, y), ref, atol=1e-5)

def test_inference_wrapper_formula(dls):
    m = tiny().eval(); x, _ = dls.one_batch()
    w = robal_inference(m, dls.counts, scale=10., tau_p=0.3)
    with torch.no_grad():
        f, W = m.features(x), m.head.weight
        cos = F.normalize(f, dim=1) @ (W / (W.norm(dim=1, keepdim=True) + 1/32)).T
        n = torch.tensor(dls.counts, dtype=torch.float)
        assert torch.allclose(w(x), 10 * cos - 0.3 * (n / n.sum()).log(), atol=1e-5)

def test_wrapper_reads_head_scale(dls):
    "A cosine head trained at scale 2 is divided back to the cosine before the test-time scale"
    torch.manual_seed(0)
    m2 = create_model('small_cnn', 10, in_ch=1, width=4, hidden=8, head='cosine', scale=2.).eval()
    x, _ = dls.one_batch()
    with torch.no_grad(): assert torch.allclose(robal_inference(m2, dls.counts, tau_p=0.)(x), 5 * m2(x), atol=1e-5)

def test_attack_through_wrapper_leaves_model(dls):
    m = tiny().train(); x, y = dls.one_batch()
    F.cross_entropy(m(x), y).backward()
    state = [(p.detach().clone(), p.grad.clone()) for p in m.parameters()]; bufs = [b.clone() for b in m.buffers()]
    xa = pgd(robal_inference(m, dls.counts), x, y, steps=3)
    assert (xa - x).abs().max() <= 8/255 + 1e-6
    assert all(mm.training for mm in m.modules())
    for b, b0 in zip(m.buffers(), bufs): assert torch.equal(b, b0)
    for p, (p0, g0) in zip(m.parameters(), state): assert torch.equal(p, p0) and torch.equal(p.grad, g0)

def test_unknown_preset_lists_names():
    with pytest.raises(ValueError) as e: robal_preset('cifar10')
    for n in ROBAL_PRESETS: assert n in str(e.value)
    with pytest.raises(ValueError, match='cifar100-n'): RoBalTrain(preset='robal_n')
    with pytest.raises(ValueError, match='cifar10-r'): robal_eval_model(tiny(), [2, 1], 'x')

def test_eval_model_per_preset():
    m, counts = tiny(), list(range(10, 0, -1))
    assert robal_eval_model(m, counts, 'cifar10-r') is m
    for p in ('cifar10-n', 'cifar100-n', 'cifar100-r'):
        w = robal_eval_model(m, counts, p)
        assert (w.scale, w.tau_p) == (ROBAL_PRESETS[p]['eval']['scale'], ROBAL_PRESETS[p]['eval']['tau_p'])

def test_lr_schedule_compounds():
    lr = [0.1 * f for f in robal_lr_factors(80)]
    assert lr[58] == pytest.approx(0.1) and lr[59] == pytest.approx(1e-2) and lr[60] == pytest.approx(1e-3)
    assert lr[79] == pytest.approx(1e-28, rel=1e-6)
    assert 0.1 * robal_lr_factors(80, warmup_epochs=5)[10] == pytest.approx(0.0192)
    flat = [0.1 * f for f in robal_lr_factors(80, compounding=False)]
    assert flat[58] == pytest.approx(0.1) and flat[70] == pytest.approx(1e-2) and flat[79] == pytest.approx(1e-3)
    s = robal_lr_schedule(0.1, 4, lr_decline=(2, 3))
    assert [s(p) for p in (0., 0.25, 0.5, 0.75, 0.999)] == pytest.approx([0.1, 0.01, 1e-4, 1e-6, 1e-6])

def test_lr_schedule_in_fastai(dls):
    seen = []
    class LR(Callback):
        order = 100
        def after_epoch(self): seen.append(self.learn.opt.hypers[0]['lr'])
    l = adv_learner(dls, tiny(), method='robal', robust_metric=False, steps=1)
    with l.no_bar(), l.no_logging(): l.fit(3, cbs=[ParamScheduler({'lr': robal_lr_schedule(0.1, 3, lr_decline=(2,))}), LR()])
    assert seen == pytest.approx([0.1, 0.01, 0.001])

def test_warns_without_cosine_head(dls):
    torch.manual_seed(0)
    lin = create_model('small_cnn', 10, in_ch=1, width=4, hidden=8)
    l = adv_learner(dls, lin, method='robal', robust_metric=False, steps=1)
    with pytest.warns(UserWarning, match='cosine'):
        with l.no_bar(), l.no_logging(): l.fit(1, 0.01)


def test_robal_row_of_a_table(tmp_path):
    "RoBal's `preset` option and a table row's `preset` metadata share a name: the run completes and its card keeps both"
    import json
    from ltat.experiment import run_experiment
    run_experiment('synthetic', 10, method='robal', arch='small_cnn', epochs=1, steps=1, bs=32, out=tmp_path,
                   attacks=('clean', 'pgd20'), rob_batches=1, arch_kw=dict(width=8, head='cosine', scale=1.),
                   data_kw=dict(in_ch=1, img_size=12, n_per_class=40, n_test=8), method_kw=dict(preset='cifar10-n'),
                   meta=dict(row='RoBal-N', preset='fmnist-lt'), progress=False, verbose=False)
    card = json.loads((tmp_path / 'card_last.json').read_text())
    assert card['preset'] == 'fmnist-lt' and card['method_kw'] == {'preset': 'cifar10-n'} and card['method'] == 'robal'


def test_table1_bias_rows(tmp_path):
    "RoBal Table 1's focal row starts the bias at the class prior, the LA row never trains its bias (official configs)"
    import torch
    from ltat.experiment import run_experiment
    from ltat.models import prior_bias
    from ltat.reproduce import TABLES, _recipe
    rows = {r['name']: _recipe(r) for r in TABLES['robal-table1'] if 'post' not in r}
    assert rows['Hard-example mining (focal)']['arch_kw'] == dict(bias_init='prior')
    assert rows['Class-aware bias (LA)']['arch_kw'] == dict(train_bias=False)
    assert 'bias_init' not in rows['Vanilla FC']['arch_kw'] and 'train_bias' not in rows['Vanilla FC']['arch_kw']
    # through the real run: a frozen bias that starts at the prior is the prior after training; a trained one moves
    kw = dict(arch='small_cnn', epochs=1, steps=1, bs=32, attacks=('clean',), data_kw=dict(in_ch=1, img_size=12, n_per_class=40, n_test=8),
              progress=False, verbose=False, select='last')
    run_experiment('synthetic', 10, out=tmp_path / 'frozen', arch_kw=dict(width=8, bias_init='prior', train_bias=False), **kw)
    run_experiment('synthetic', 10, out=tmp_path / 'trained', arch_kw=dict(width=8, bias_init='prior'), **kw)
    from ltat.data import lt_dls
    counts = lt_dls('synthetic', 10, **kw['data_kw']).counts
    bias = lambda d: torch.load(tmp_path / d / 'last.pth', map_location='cpu', weights_only=False)['model']['head.bias']
    torch.testing.assert_close(bias('frozen'), prior_bias(counts))
    assert not torch.allclose(bias('trained'), prior_bias(counts))
