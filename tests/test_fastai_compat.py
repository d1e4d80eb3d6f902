"""What a fastai user does with DataLoaders and a Learner, on ltat's loaders: show_batch, show_results, interpretation,
predict, test_dl + get_preds, export + load_learner. Small, CPU, seconds."""
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.interpret import ClassificationInterpretation
from fastai.learner import load_learner

from ltat.data import TensorDL, TensorDS, lt_dls
from ltat.learner import adv_learner
from ltat.models import create_model

FMNIST = Path('/usr/share/datasets/fashion-mnist')
needs_fmnist = pytest.mark.skipif(not (FMNIST / 'train-images-idx3-ubyte.gz').exists(),
                                  reason='Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)')


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close('all')


@pytest.fixture(scope='module')
def fdls():
    "Fashion-MNIST-LT, IR 10, 200 images in the largest class"
    return lt_dls('fashion_mnist', ir=10, n_max=200, bs=32, download=False, device='cpu')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A small CNN adversarially trained (PGD, 2 steps) for four epochs on 28-px grey synthetic data, which it learns"
    torch.manual_seed(0)
    dls = lt_dls('synthetic', ir=2, bs=32, in_ch=1, img_size=28, n_per_class=60, n_test=20, device='cpu')
    model = create_model('small_cnn', dls.n_classes, in_ch=1, width=8, hidden=32)
    learn = adv_learner(dls, model, method='pgd_at', eps=2/255, alpha=1/255, steps=2, robust_metric=False, lr=0.05,
                        path=tmp_path_factory.mktemp('learn'))
    with learn.no_bar(), learn.no_logging(): learn.fit(4)
    learn.remove_cb(learn.progress)                                              # no bars in the test log
    return learn


def titles(axs): return [ax.get_title() for ax in axs]


@needs_fmnist
def test_class_names_are_real(fdls):
    assert list(fdls.vocab)[6] == 'Shirt' and fdls.c == 10 and fdls.vocab.o2i['Ankle boot'] == 9
    assert list(fdls.valid.vocab) == list(fdls.vocab)                          # every split knows the names


@needs_fmnist
def test_show_batch(fdls):
    axs = fdls.show_batch(max_n=6)
    ys = fdls.train.new().one_batch()[1][:6]
    assert titles(axs) == [fdls.vocab[int(c)] for c in ys]
    assert len(axs[0].images) == 1 and axs[0].images[0].get_array().shape == (28, 28)
    x, y, its = fdls.show_batch(max_n=4, show=False)                           # fastai's (x, y, items)
    assert type(x).__name__ == 'TensorImageBW' and [str(o[1]) for o in its] == [fdls.vocab[int(c)] for c in ys[:4]]
    # looking at the data leaves the training stream alone
    first = [b[1] for b in fdls.train.new()]
    fdls.show_batch(); fdls.show_batch(unique=True)
    assert all(torch.equal(a, b[1]) for a, b in zip(first, fdls.train.new()))


@needs_fmnist
def test_show_batch_unique(fdls):
    axs = fdls.show_batch(max_n=4, unique=True)
    assert len(set(titles(axs))) == 1


def test_show_results(trained):
    learn = trained
    learn.show_results(max_n=6)
    axs = plt.gcf().axes[:6]
    for ax in axs:
        actual, pred = ax.get_title().split('\n')
        assert actual in learn.dls.vocab and pred in learn.dls.vocab
        assert ax.title.get_color() == ('green' if actual == pred else 'red')


def test_interpretation(trained):
    learn = trained
    interp = ClassificationInterpretation.from_learner(learn)
    cm = interp.confusion_matrix()
    preds, targs = learn.get_preds()
    assert cm.shape == (10, 10) and cm.sum() == len(targs) == 200
    assert cm.trace() == (preds.argmax(1) == targs).sum().item()
    assert cm.trace() / cm.sum() > 0.5                                             # it learnt (chance: 0.1)
    assert (cm.sum(1) == np.bincount(targs.numpy(), minlength=10)).all()       # rows are the actual classes
    losses, idx = interp.top_losses(5)
    assert len(interp.top_losses(5, items=True)[2]) == 5
    interp.plot_confusion_matrix()
    interp.most_confused()


def test_plot_top_losses(trained):
    import fastai.vision.learner  # noqa: F401  (registers plot_top_losses for images, as `from fastai.vision.all import *` does)
    interp = ClassificationInterpretation.from_learner(trained)
    interp.plot_top_losses(4)
    losses, _ = interp.top_losses(4)
    shown = [ax.get_title() for ax in plt.gcf().axes if ax.get_title()][:4]
    assert [float(t.split('/')[2]) for t in shown] == pytest.approx([round(l, 2) for l in losses.tolist()], abs=0.006)


def test_test_dl_and_get_preds(trained):
    learn = trained
    x = learn.dls.valid.dataset.x[:40].float() / 255                           # images in [0, 1], as a user has them
    ref, _ = learn.get_preds(dl=learn.dls.valid.new(TensorDS(learn.dls.valid.dataset.x[:40])))
    for items in (x, list(x), x[:, 0], x.permute(0, 2, 3, 1).numpy()):
        preds, targs = learn.get_preds(dl=learn.dls.test_dl(items))
        assert targs is None and torch.allclose(preds, ref, atol=1e-6)
    name, idx, probs = learn.predict(x[3])
    assert name == learn.dls.vocab[int(ref[3].argmax())] and int(idx) == int(ref[3].argmax())
    assert torch.allclose(probs, ref[3], atol=1e-6)
    with pytest.raises(ValueError, match=r'\[0, 1\]'): learn.dls.test_dl(x * 255)
    with pytest.raises(ValueError, match=r'\(1, 28, 28\)'): learn.dls.test_dl(torch.rand(2, 3, 28, 28))


def test_export_and_load_learner(trained, tmp_path):
    learn = trained
    x = learn.dls.valid.dataset.x[:50].float() / 255
    before, _ = learn.get_preds(dl=learn.dls.test_dl(x))
    learn.export(tmp_path / 'model.pkl')
    assert len(learn.dls.train.dataset) == sum(learn.dls.counts)              # the learner keeps its data
    again = load_learner(tmp_path / 'model.pkl')
    assert len(again.dls.train.dataset) == 0 and len(again.dls.valid.dataset) == 0   # the file does not
    after, _ = again.get_preds(dl=again.dls.test_dl(x))
    assert torch.equal(after, before)
    assert (again.dls.counts, again.dls.subset_seed, again.dls.dataset_name) == (learn.dls.counts, 0, 'synthetic')
    assert list(again.dls.vocab) == list(learn.dls.vocab) and again.predict(x[0])[0] == learn.predict(x[0])[0]


def test_new_keeps_settings_and_refuses_unknown():
    ds = TensorDS(torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8), torch.arange(12) % 3, ['a', 'b', 'c'])
    dl = TensorDL(ds, bs=5, shuffle=True, pad=1, flip=True, seed=3)
    new = dl.new(num_workers=4, process=True)                                  # fastai loader options are accepted and ignored
    assert (new.bs, new.shuffle, new.pad, new.flip, new.seed) == (5, True, 1, True, 3)
    assert list(dl.new(TensorDS(ds.x)).vocab) == ['a', 'b', 'c']              # a new split inherits the names
    with pytest.raises(TypeError, match='bz'): dl.new(bz=3)
    empty = dl.new(ds.new_empty())
    assert len(empty) == 0 and tuple(empty.dataset.x.shape[1:]) == (1, 4, 4)
    with pytest.raises(ValueError, match='no batch'): empty.one_batch()
