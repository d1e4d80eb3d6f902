"REAT: RBL counts, state round trip, training smoke test, bad input"
import math, pytest, torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from ltat.data import lt_dls
from ltat.models import create_model
from ltat.learner import adv_learner
from ltat.attacks import pgd
from ltat.losses import rbl_weights
from ltat.reat import REATTrain, HeadInput

torch.set_num_threads(1)

def tiny_dls(): return lt_dls('synthetic', 10, bs=32, n_classes=4, in_ch=1, img_size=28, n_per_class=40, n_test=8, device='cpu')
def tiny_model(): return create_model('small_cnn', 4, in_ch=1, width=8)

class PredCounter(Callback):
    order = 100
    def before_fit(self): self.c = torch.zeros(self.dls.n_classes)
    def after_loss(self):
        if self.training: self.c += torch.bincount(self.learn.pred.argmax(1), minlength=self.dls.n_classes)

class GradCheck(Callback):
    order = 100
    def after_backward(self):
        if self.training and self.iter == 0:
            self.ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in self.learn.model.parameters())

@pytest.mark.parametrize('kw', [dict(), dict(tail_variant='paper'), dict(count_mode='eval', ae_floor=1)])
def test_reat_trains_counts_and_grads(kw):
    torch.manual_seed(0)
    learn = adv_learner(tiny_dls(), tiny_model(), method='reat', steps=2, robust_metric=False, cbs=[PredCounter(), GradCheck()], **kw)
    learn.fit(1, 0.01)
    assert math.isfinite(learn.recorder.losses[-1])
    assert learn.grad_check.ok
    cb = learn.reat_train
    assert int(cb.ae_counts.sum()) == len(learn.dls.train) * 32
    if kw.get('count_mode', 'train') == 'train': assert torch.equal(cb.ae_counts, learn.pred_counter.c)

def test_reat_state_round_trip_and_next_epoch_weights():
    torch.manual_seed(0)
    dls = tiny_dls()
    learn = adv_learner(dls, tiny_model(), method='reat', steps=1, robust_metric=False, cbs=PredCounter())
    learn.fit(1, 0.01)
    c1, sd = learn.pred_counter.c.clone(), learn.reat_train.state_dict()
    cb2 = REATTrain(); cb2.load_state_dict(sd)
    assert torch.equal(cb2.ae_counts, c1) and cb2.next_counts.sum() == 0
    learn.fit(1, 0.01)
    assert torch.allclose(learn.reat_train.w, rbl_weights(dls.counts, c1), atol=1e-5)

def test_reat_attack_leaves_bn_buffers():
    m = tiny_model(); bufs = [b.clone() for b in m.buffers()]
    cb = REATTrain(); cb.w = torch.tensor([0.1, 0.5, 1.0, 2.4])
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 4, (8,))
    pgd(m, x, y, steps=2, loss=cb.rbl)
    assert all(torch.equal(a, b) for a, b in zip(bufs, m.buffers()))

def test_reat_bad_input():
    dls = tiny_dls()
    # a plain fastai DataLoaders has no `counts`: REAT's weights come from the training labels, the same as lt_dls's counts
    l = adv_learner(DataLoaders(dls.train, dls.valid), tiny_model(), method='reat', steps=1, robust_metric=False)
    assert not hasattr(l.dls, 'counts') and l.reat_train.class_counts().tolist() == [float(c) for c in dls.counts]
    with pytest.raises(ValueError, match="'mse'"): REATTrain(loss='mse')
    with pytest.raises(ValueError, match='ae_floor=-1'): REATTrain(ae_floor=-1)
    with pytest.raises(ValueError, match='Linear'): HeadInput(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match='3 classes'):
        adv_learner(dls, tiny_model(), method='reat', counts=[10, 5, 2], steps=1, robust_metric=False).fit(1)
