"""Every method and loss on fastai `DataLoaders` built by a fastai user (a `DataBlock` over an image folder), not by `lt_dls`."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastai.data.block import DataBlock, CategoryBlock
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.data.transforms import get_image_files, parent_label, GrandparentSplitter
from fastai.vision.augment import Resize
from fastai.vision.data import ImageBlock, ImageDataLoaders

from ltat.all import *                     # registers every method, loss and sampler
from ltat.data import dataset_labels, dataset_subset, subset_dl, train_counts
from ltat.learner import METHODS, adv_learner
from ltat.losses import LT_LOSSES
from ltat.models import create_model
from ltat.self_distill import balanced_dls

torch.set_num_threads(1)
COUNTS = [24, 8, 4]                        # a long tail over three classes
SIZE = 16


def write_folder(root, counts=COUNTS, n_valid=4, size=SIZE):
    "PNG files train/<class>/*.png, valid/<class>/*.png; class k is bright in colour channel k, with noise"
    from PIL import Image
    rng = np.random.default_rng(0)
    for k, n in enumerate(counts):
        for split, m in (('train', n), ('valid', n_valid)):
            d = Path(root) / split / f'c{k}'; d.mkdir(parents=True, exist_ok=True)
            for j in range(m):
                a = np.full((size, size, 3), 40.); a[..., k] = 200
                Image.fromarray(np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)).save(d / f'{j}.png')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('imgs'); write_folder(root); return root


@pytest.fixture(scope='module')
def dls(folder):
    block = DataBlock((ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                      splitter=GrandparentSplitter(train_name='train', valid_name='valid'), item_tfms=Resize(SIZE))
    return block.dataloaders(folder, bs=8, num_workers=0, device='cpu')


def model(seed=0):
    torch.manual_seed(seed)
    return create_model('small_cnn', 3, in_ch=3, width=8, hidden=16)


def test_counts_from_the_labels(dls, folder):
    assert getattr(dls, 'counts', None) is None                      # a fastai user's DataLoaders: no `dls.counts`
    want = [dls.vocab.o2i[Path(p).parent.name] for p in dls.train.dataset.items]   # independent: from the file names
    assert dataset_labels(dls.train.dataset).tolist() == want
    assert train_counts(dls) == COUNTS
    fdls = ImageDataLoaders.from_folder(folder, train='train', valid='valid', bs=8, num_workers=0, device='cpu', item_tfms=Resize(SIZE))
    assert train_counts(fdls) == COUNTS
    xb, _ = dls.one_batch()
    assert 0 <= xb.min() and xb.max() <= 1                            # ImageBlock's IntToFloatTensor: [0, 1]


def test_counts_of_other_datasets():
    class TV:                                                        # torchvision-like: `targets`, items (image, label)
        targets = [0, 2, 2, 1, 2]
        def __len__(self): return 5
        def __getitem__(self, i): return torch.rand(3, 4, 4), self.targets[i]
    dl = DataLoader(TV(), bs=2)
    assert train_counts(DataLoaders(dl, dl)) == [1, 1, 3]
    assert dataset_labels(dataset_subset(TV(), [4, 0, 0])).tolist() == [2, 0, 0]
    class NoLabels(TV):                                              # items (x,): nothing to count
        def __getitem__(self, i): return (torch.rand(3, 4, 4),)
        targets = None
    with pytest.raises(ValueError, match='not .x, y. pairs'): dataset_labels(NoLabels())
    nl = DataLoader(NoLabels(), bs=2)
    learn = adv_learner(DataLoaders(nl, nl), model(), method='at_bsl', robust_metric=False)
    cb = next(c for c in learn.cbs if type(c).__name__ == 'ATBSLTrain')
    with pytest.raises(ValueError, match='counts=None'): cb.class_counts()
    assert cb.class_counts.__self__ is cb and ATBSLTrain(counts=[3, 1]).counts == [3, 1]   # explicit counts stay possible


def test_balanced_teacher_set_from_a_datablock(dls):
    b = balanced_dls(dls, gamma=2, bs=4)                             # gamma * n_min = 8 per class
    assert b.counts == [8, 8, 8]
    assert type(b.train) is type(dls.train)                          # the DataBlock's own loader and pipelines
    ys = torch.cat([y for _, y in b.train])
    assert len(ys) == 24 and np.bincount(ys.numpy()).tolist() == [8, 8, 8]
    x, y = b.train.one_batch()
    assert (x[:, :, SIZE // 2, SIZE // 2].argmax(1) == y).all()     # the images still belong to their labels
    sub = subset_dl(dls.train, [0, 0, 1], bs=3, shuffle=False)
    assert len(sub.dataset) == 3 and torch.equal(sub.one_batch()[0][0], sub.one_batch()[0][1])


@pytest.mark.parametrize('method', list(METHODS))
def test_every_method_on_a_datablock(dls, method):
    kw = dict(teacher_epochs=1, teacher_bs=8) if method == 'self_distill' else {}
    learn = adv_learner(dls, model(), method=method, steps=1, robust_metric=False, **kw)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.01)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])
    cb = next((c for c in learn.cbs if type(c).__name__.endswith('Train')), None)
    if cb is not None and method in ('robal', 'at_bsl', 'reat', 'srat', 'self_distill'):
        assert cb.class_counts().tolist() == COUNTS                 # counted from the DataBlock's labels


@pytest.mark.parametrize('loss', sorted(LT_LOSSES))
def test_every_loss_on_a_datablock(dls, loss):
    with pytest.warns(UserWarning, match='LDAM') if loss in ('ldam', 'ldam_drw') else _nothing():   # s=30 on a linear head: warned
        learn = adv_learner(dls, model(), method='pgd_at', loss=loss, steps=1, robust_metric=False)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.01)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])


class _nothing:
    def __enter__(self): return self
    def __exit__(self, *a): return False


def test_at_bsl_learns_on_a_datablock(dls):
    "A long-tailed method on the DataBlock's data learns: validation accuracy far above chance (1/3)"
    from fastai.torch_core import set_seed
    set_seed(1)
    learn = adv_learner(dls, model(1), method='at_bsl', eps=2/255, alpha=1/255, steps=2, robust_metric=False)
    with learn.no_bar(), learn.no_logging(): learn.fit(10, 0.02)
    acc = learn.validate()[1]
    assert acc > 0.75, acc


def test_class_aware_sampling_on_a_datablock(dls):
    "RoBal's class-aware epoch on the DataBlock's loader: n_max * C = 72 images, every class 24 times"
    from ltat.lt_at import class_aware_dl
    cdl = class_aware_dl(dls.train, seed=0)
    assert type(cdl) is type(dls.train) and len(cdl) == 72 // 8
    ys = torch.cat([y for _, y in cdl])
    assert np.bincount(ys.numpy()).tolist() == [24, 24, 24]
    learn = adv_learner(dls, model(), sampler='class_aware', steps=1, robust_metric=False)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.01)
    assert learn.dls.train is dls.train and math.isfinite(learn.recorder.values[-1][0])


def test_methods_on_imagenet_lt_read_lazily(tmp_path):
    "ImageNet-LT's DataLoaders (images read from their files per batch) train a long-tailed method and self-distillation"
    from test_data import write_imagenet_lt
    from ltat.data import imagenet_lt_dls
    write_imagenet_lt(tmp_path)
    idls = imagenet_lt_dls(tmp_path, bs=4, size=16, num_workers=0, device='cpu')
    for method, kw in (('at_bsl', {}), ('self_distill', dict(teacher_epochs=1, teacher_bs=4))):
        learn = adv_learner(idls, model(), method=method, steps=1, robust_metric=False, **kw)
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.01)
        assert all(math.isfinite(v) for v in learn.recorder.values[-1])
        cb = next(c for c in learn.cbs if type(c).__name__.endswith('Train'))
        assert cb.class_counts().tolist() == [6, 3, 1]


def test_export_with_imagenet_lt(tmp_path):
    "learn.export / load_learner keep ImageNet-LT's description; the copy predicts the same"
    import warnings
    from fastai.learner import load_learner
    from test_data import write_imagenet_lt
    from ltat.data import imagenet_lt_dls
    write_imagenet_lt(tmp_path / 'inet')
    idls = imagenet_lt_dls(tmp_path / 'inet', bs=4, size=16, num_workers=0, device='cpu')
    learn = adv_learner(idls, model(), method='pgd_at', steps=1, robust_metric=False, path=tmp_path)
    learn.export('e.pkl')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        again = load_learner(tmp_path / 'e.pkl')
    assert (again.dls.counts, again.dls.n_classes) == ([6, 3, 1], 3) and len(again.dls.train.dataset) == 0
    x = idls.test.one_batch()[0]
    learn.model.eval(); again.model.eval()
    with torch.no_grad(): assert torch.equal(learn.model(x), again.model(x))
