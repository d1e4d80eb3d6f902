"Long-tailed losses inside PGD-AT, DRW, class-aware sampling, fine-tuning and inference wrappers (fast, CPU)."
import math
import pytest, torch, torch.nn.functional as F
from fastai.callback.core import Callback
from ltat.data import lt_dls
from ltat.models import create_model
from ltat.attacks import pgd
from ltat.losses import LT_LOSSES, bsl_loss, cb_weights, ldam_loss
from ltat.learner import adv_learner, AdvTrain
from ltat.lt_at import (DRW, class_aware_order, class_aware_dl, ClassAwareDL, finetune, LWSHead, CDTPost, TauNorm, LAPost,
                        TDEHead, TDEPost)

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def dls():
    return lt_dls('synthetic', 10, bs=32, in_ch=1, img_size=8, n_per_class=40, n_test=4, n_classes=4, device='cpu', augment=False)

def tiny(seed=0, head='linear'):
    torch.manual_seed(seed)
    return create_model('small_cnn', 4, in_ch=1, width=4, hidden=8, head=head)

def _adv(learn): return next(c for c in learn.cbs if isinstance(c, AdvTrain))

@pytest.mark.parametrize('name', sorted(LT_LOSSES))
@pytest.mark.parametrize('loss_on', ['train', 'both'])
def test_every_loss_trains(dls, name, loss_on):
    learn = adv_learner(dls, tiny(), loss=name, loss_on=loss_on, steps=1, robust_metric=False, lr=0.01)
    learn.fit(1)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1]), learn.recorder.values[-1]
    # every parameter gets a finite, non-None gradient from the outer loss on one batch of adversarial examples
    cb, m = _adv(learn), learn.model
    x, y = dls.train.one_batch()
    cb.old_lf = F.cross_entropy
    m.zero_grad(set_to_none=True); m.train()
    cb.train_loss(m(cb.craft(x, y)), y).backward()
    for k, p in m.named_parameters(): assert p.grad is not None and torch.isfinite(p.grad).all(), (name, k)

def test_outer_loss_is_the_formula(dls):
    learn = adv_learner(dls, tiny(), loss='bsl', robust_metric=False)
    z, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 3])
    assert torch.allclose(_adv(learn).train_loss(z, y), bsl_loss(z, y, dls.counts))

def test_attack_loss(dls):
    learn = adv_learner(dls, tiny(), loss='ldam', loss_on='attack', init='none', steps=2, robust_metric=False)
    x, y = dls.train.one_batch()
    ref = pgd(learn.model, x, y, 8/255, 2/255, 2, loss=lambda z, t: ldam_loss(z, t, dls.counts), init='none')
    assert torch.equal(_adv(learn).craft(x, y), ref)

def test_errors(dls):
    with pytest.raises(ValueError, match="'ldam'"): adv_learner(dls, tiny(), loss='lda')
    with pytest.raises(ValueError, match='loss_on'): adv_learner(dls, tiny(), loss='bsl', loss_on='outer')
    with pytest.raises(ValueError, match='sampler'): adv_learner(dls, tiny(), sampler='balanced')
    counts = dls.counts
    try:
        del dls.counts                     # without `counts`, the BSL prior comes from the training labels
        l = adv_learner(dls, tiny(), loss='bsl')
        assert l.adv_train.class_counts().tolist() == [float(c) for c in counts]
    finally: dls.counts = counts

def test_drw_switch_and_state(dls):
    learn = adv_learner(dls, tiny(), loss='ldam_drw', loss_kw=dict(drw_frac=0.5), steps=1, robust_metric=False)
    cb = _adv(learn)
    seen = []
    class Rec(Callback):
        order = AdvTrain.order + 1
        def before_train(self): seen.append(cb.lt_loss.drw.weight is not None)
    learn.add_cb(Rec()); learn.fit(2, 0.01)
    assert seen == [False, True]
    sd = cb.state_dict(); assert sd == {'loss': {'epoch': 1, 'active': True}}
    other = adv_learner(dls, tiny(), loss='ldam_drw', steps=1, robust_metric=False)
    _adv(other).load_state_dict(sd); assert _adv(other).lt_loss.drw.active
    d = DRW([100, 10]); assert d.start(200) == 160 and d.set_epoch(159, 200) is None
    assert torch.allclose(d.set_epoch(160, 200), cb_weights([100, 10]))

def test_class_aware(dls):
    y = dls.train.dataset.y
    o = class_aware_order(y, torch.Generator().manual_seed(1))
    assert len(o) == 40 * 4 and torch.bincount(y[o]).tolist() == [40] * 4
    dl = class_aware_dl(dls.train)
    assert isinstance(dl, ClassAwareDL) and len(dl) == 160 // 32
    with pytest.raises(ValueError, match='TensorDL'): class_aware_dl([1, 2, 3])

def _snap(m): return {k: v.detach().clone() for k, v in m.named_parameters()}

@pytest.mark.parametrize('kind', ['rs', 'rw', 'lws'])
def test_finetune_changes_only_what_it_should(dls, kind):
    learn = adv_learner(dls, tiny(), steps=1, robust_metric=False)
    before = _snap(learn.model)
    finetune(learn, kind, lr=0.05)
    after = _snap(learn.model)
    if kind == 'lws': after = {k.replace('head.head.', 'head.'): v for k, v in after.items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if kind == 'rs': assert changed and all(k.startswith('head.') for k in changed)
    if kind == 'rw': assert changed == set(before)
    if kind == 'lws':
        assert changed == set() and isinstance(learn.model.head, LWSHead)
        assert not torch.equal(after['head.scale'], torch.ones(4))
    assert all(p.requires_grad for p in learn.model.parameters())

def test_wrappers(dls):
    m = tiny().eval(); x, y = dls.valid.one_batch()
    n = torch.tensor(dls.counts, dtype=torch.float)
    with torch.no_grad():
        f, z = m.features(x), m(x)
        assert torch.allclose(CDTPost(m, dls.counts, 0.3)(x), z / n ** 0.3, atol=1e-6)
        assert torch.allclose(LAPost(m, dls.counts)(x), z - (n / n.sum()).log(), atol=1e-6)
        W = m.head.weight
        assert torch.allclose(TauNorm(m, 1.)(x), f @ (W / W.norm(dim=1, keepdim=True)).t(), atol=1e-6)
    mt = tiny(1); mt.head = TDEHead(mt.feat_dim, 4); mt.train(); mt(x); mt(x); mt.eval()
    d = mt.head.direction
    with torch.no_grad():
        f = mt.features(x); ft = F.normalize(f, dim=1); Wt = mt.head.weight / (mt.head.weight.norm(dim=1, keepdim=True) + 1/32)
        cos = F.cosine_similarity(f, d.expand_as(f), dim=1)[:, None]
        assert torch.allclose(TDEPost(mt, 0.3)(x), 16 * (ft - 0.3 * d * cos) @ Wt.t(), atol=1e-4)
    for w in (CDTPost(m, dls.counts), TauNorm(m), LAPost(m, dls.counts), TDEPost(mt)):
        xa = pgd(w, x, y, 8/255, 2/255, 2)
        assert 0 < (xa - x).abs().max() <= 8/255 + 1e-6
    with pytest.raises(ValueError, match='linear head'): TauNorm(mt)
    with pytest.raises(ValueError, match='TDEHead'): TDEPost(m)
