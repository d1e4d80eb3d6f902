"SRAT: Eq. 7, DRW switch, adversarial features, training smoke test, bad input"
import math, pytest, torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from ltat.data import lt_dls
from ltat.models import create_model
from ltat.learner import adv_learner
from ltat.losses import cb_weights, supcon_loss
from ltat.srat import SRATTrain, srat_loss, srat_pred_loss

torch.set_num_threads(1)

def tiny_dls(): return lt_dls('synthetic', 10, bs=32, n_classes=4, in_ch=1, img_size=28, n_per_class=40, n_test=8, device='cpu')
def tiny_model(): return create_model('small_cnn', 4, in_ch=1, width=8)

class WLog(Callback):
    order = 100
    def before_fit(self): self.w = []
    def after_loss(self):
        if self.training and self.iter == 0: self.w.append(self.learn.srat_train.w)
    def after_backward(self):
        if self.training and self.iter == 0:
            self.ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in self.learn.model.parameters())

def test_eq7_against_per_sample_terms():
    g = torch.Generator().manual_seed(0)
    z, f, y = torch.randn(6, 3, generator=g), torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([0.2, 1.0, 1.8])
    ce = torch.nn.functional.cross_entropy(z, y, reduction='none')
    want = (w[y] * ce).mean() + 0.5 * supcon_loss(f, y, 0.2)
    assert torch.allclose(srat_loss(z, f, y, w, lam=0.5, tau=0.2), want, atol=1e-6)
    assert torch.allclose(srat_pred_loss(z, y), ce.mean(), atol=1e-6)

@pytest.mark.parametrize('loss', ['ce', 'focal', 'ldam'])
def test_srat_trains_and_switches(loss):
    torch.manual_seed(0)
    dls = tiny_dls()
    learn = adv_learner(dls, tiny_model(), method='srat', loss=loss, drw_epoch=1, steps=1, robust_metric=False, cbs=WLog())
    learn.fit(2, 0.01)
    assert math.isfinite(learn.recorder.losses[-1]) and learn.w_log.ok
    assert learn.w_log.w[0] is None and torch.allclose(learn.w_log.w[1], cb_weights(dls.counts, 0.9999))
    assert learn.srat_train.state_dict() == {'drw_active': True}

def test_srat_drw_state_round_trip():
    learn = adv_learner(tiny_dls(), tiny_model(), method='srat', drw_epoch=5, steps=1, robust_metric=False, cbs=WLog())
    learn.srat_train.load_state_dict({'drw_active': True})
    learn.fit(1, 0.01)
    assert learn.w_log.w[0] is not None

def test_srat_bad_input():
    dls = tiny_dls()
    with pytest.raises(ValueError, match="'hinge'"): SRATTrain(loss='hinge')
    with pytest.raises(ValueError, match='drw_epoch=-1'): SRATTrain(drw_epoch=-1)
    l = adv_learner(DataLoaders(dls.train, dls.valid), tiny_model(), method='srat', steps=1, robust_metric=False)
    assert not hasattr(l.dls, 'counts') and l.srat_train.class_counts().tolist() == [float(c) for c in dls.counts]   # counted from the labels

class BufSnap(Callback):
    order = 10.5
    def before_batch(self):
        if self.training: self.learn.bufs = [b.clone() for b in self.learn.model.buffers()]
class BufCmp(Callback):
    order = 12
    def before_batch(self):
        if self.training: self.same = all(torch.equal(a, b) for a, b in zip(self.learn.bufs, self.learn.model.buffers()))

def test_srat_attack_with_sep_leaves_bn_buffers():
    torch.manual_seed(0)
    learn = adv_learner(tiny_dls(), tiny_model(), method='srat', sep_in_attack=True, proj_dim=4, steps=2, robust_metric=False,
                        cbs=[BufSnap(), BufCmp()])
    learn.fit(1, 0.01)
    assert learn.buf_cmp.same and math.isfinite(learn.recorder.losses[-1])
