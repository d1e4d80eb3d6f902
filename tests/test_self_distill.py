"Balanced self-distillation: D_B, frozen teacher, loss terms, bad input"
import math, numpy as np, pytest, torch
from fastai.callback.core import Callback
from ltat.data import lt_dls
from ltat.models import create_model
from ltat.learner import adv_learner
from ltat.losses import kl_div, bsl_loss
from ltat.self_distill import balanced_subset, self_distill_loss, SelfDistillTrain, freeze

torch.set_num_threads(1)

def tiny_dls(): return lt_dls('synthetic', 10, bs=32, n_classes=4, in_ch=1, img_size=28, n_per_class=40, n_test=8, device='cpu')
def tiny_model(): return create_model('small_cnn', 4, in_ch=1, width=8)

def test_balanced_subset_counts_and_tail():
    y = np.repeat(np.arange(4), [50, 20, 9, 5])
    idx = balanced_subset(y)                                # gamma = IR/2 = 5 -> 25 per class
    assert np.bincount(y[idx]).tolist() == [25] * 4
    for c in (2, 3): assert set(np.where(y == c)[0]) <= set(idx)
    assert len(set(idx[y[idx] == 0])) == 25                 # head: no repeats
    assert np.bincount(y[balanced_subset(y, gamma=2)]).tolist() == [10] * 4
    with pytest.raises(ValueError, match='gamma=0'): balanced_subset(y, gamma=0)

def test_loss_terms():
    g = torch.Generator().manual_seed(0)
    sp, sm, tp, tm = (torch.randn(5, 4, generator=g) for _ in range(4))
    y, n = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([40., 20, 9, 4])
    want = bsl_loss(sp, y, n) + 2.0 * (kl_div(tp, sp) + 20 * 0.5 * kl_div(tp - tm, sp - sm))
    assert torch.allclose(self_distill_loss(sp, sm, tp, tm, y, n, alpha=2.0, ramp=0.5), want, atol=1e-6)

class GradCheck(Callback):
    order = 100
    def after_backward(self):
        if self.training and self.iter == 0:
            self.ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in self.learn.model.parameters())

def test_self_distill_trains_with_frozen_teacher(tmp_path):
    torch.manual_seed(0)
    dls = tiny_dls()
    learn = adv_learner(dls, tiny_model(), method='self_distill', teacher_epochs=1, steps=1, teacher_dir=tmp_path,
                        robust_metric=False, cbs=GradCheck())
    learn.fit(1, 0.01)
    T = learn.self_distill_train.teacher
    before = [p.clone() for p in T.parameters()]
    learn.fit(1, 0.01)
    assert math.isfinite(learn.recorder.losses[-1]) and learn.grad_check.ok
    assert not T.training and not any(p.requires_grad for p in T.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, T.parameters()))
    assert learn.self_distill_train.state_dict() == {'teacher_path': str(tmp_path / 'teacher.pth')}
    assert (tmp_path / 'teacher.pth').exists()
    assert learn.self_distill_train.alpha == 2/255   # the PGD step is not the distillation weight

def test_teacher_passed_and_bad_teacher(tmp_path):
    dls = tiny_dls()
    t = freeze(tiny_model()); torch.save(t.state_dict(), tmp_path / 't.pth')
    l = adv_learner(dls, tiny_model(), method='self_distill', teacher=tmp_path / 't.pth', steps=1, robust_metric=False)
    l.fit(1, 0.01)
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), l.self_distill_train.teacher.state_dict().values()))
    with pytest.raises(ValueError, match='3 classes'):
        adv_learner(dls, tiny_model(), method='self_distill', teacher=create_model('small_cnn', 3, in_ch=1, width=8),
                    steps=1, robust_metric=False).fit(1)
    with pytest.raises(ValueError, match="'cosine'"): SelfDistillTrain(teacher_sched='cosine')
