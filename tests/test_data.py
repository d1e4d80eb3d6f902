"""Tests of `ltat.data` on tiny files written in each real on-disk format, loaded through `lt_dls`."""
import gzip, pickle, re, struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ltat.data import (CorruptFileError, TensorDL, balanced_indices, batch_augment, class_groups, dataset_info,
                       lt_counts, lt_dls, lt_indices, read_idx, tail_classes)


def all_batches(dl):
    "Every (x, y) of a loader in stored order, without augmentation"
    xs, ys = zip(*dl.new(shuffle=False, drop_last=False, pad=0, flip=False))
    return torch.cat(xs), torch.cat(ys)


def check_dls(dls, n_classes, in_ch, size, counts):
    "Shapes, range, dtypes and class counts common to every dataset"
    xb, yb = dls.one_batch()
    assert type(xb) is torch.Tensor and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert xb.shape[1:] == (in_ch, size, size)
    assert 0 <= xb.min().item() and xb.max().item() <= 1
    assert (dls.n_classes, dls.in_ch, dls.img_size, dls.counts) == (n_classes, in_ch, size, counts)
    x, y = all_batches(dls.train)
    assert np.bincount(y.numpy(), minlength=n_classes).tolist() == counts
    assert 0 <= x.min().item() and x.max().item() <= 1
    return x, y


# ---------------------------------------------------------------------------------------------- writers
def cifar_image(label, k):
    "A (3,32,32) uint8 image whose red plane encodes the label, green the index within its batch, blue a ramp"
    img = np.empty((3, 32, 32), np.uint8)
    img[0], img[1], img[2] = label * 2, k, np.arange(32, dtype=np.uint8)[None, :] * 8
    return img


def write_cifar10(root, per_class_batch=4, test_per_class=3):
    d = root / 'cifar-10-batches-py'; d.mkdir(parents=True)
    def batch(n):
        labels = [c for _ in range(n) for c in range(10)]
        data = np.stack([cifar_image(c, k) for k, c in enumerate(labels)]).reshape(len(labels), 3072)
        return {'batch_label': 'x', 'labels': labels, 'data': data, 'filenames': ['f.png'] * len(labels)}
    # str keys, protocol 2: what the official Python 2 pickles give when read back with encoding='latin1' (as torchvision does)
    for i in range(1, 6):
        with open(d / f'data_batch_{i}', 'wb') as f: pickle.dump(batch(per_class_batch), f, protocol=2)
    with open(d / 'test_batch', 'wb') as f: pickle.dump(batch(test_per_class), f, protocol=2)
    with open(d / 'batches.meta', 'wb') as f: pickle.dump({'label_names': [f'c{k}' for k in range(10)], 'num_vis': 3072}, f, protocol=2)


def write_cifar100(root, train_per_class=3, test_per_class=1):
    d = root / 'cifar-100-python'; d.mkdir(parents=True)
    for name, n in (('train', train_per_class), ('test', test_per_class)):
        fine = [c for _ in range(n) for c in range(100)]
        data = np.stack([cifar_image(c % 100, 0) for c in fine]).reshape(len(fine), 3072)
        with open(d / name, 'wb') as f:
            pickle.dump({'filenames': ['a'] * len(fine), 'fine_labels': fine, 'coarse_labels': [c // 5 for c in fine],
                         'data': data}, f, protocol=2)
    with open(d / 'meta', 'wb') as f:
        pickle.dump({'fine_label_names': [f'f{k}' for k in range(100)], 'coarse_label_names': [f'c{k}' for k in range(20)]}, f, protocol=2)


def idx_bytes(arr, magic):
    return struct.pack('>I', magic) + b''.join(struct.pack('>I', s) for s in arr.shape) + arr.astype(np.uint8).tobytes()


def write_fmnist(d, train_per_class=12, test_per_class=2, gz=True):
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (('train', train_per_class), ('t10k', test_per_class)):
        y = np.tile(np.arange(10), n).astype(np.uint8)
        x = (y[:, None, None] * 20 + np.zeros((1, 28, 28), np.uint8)).astype(np.uint8)
        for kind, arr, magic in (('images-idx3', x, 2051), ('labels-idx1', y, 2049)):
            raw = idx_bytes(arr, magic)
            if gz: (d / f'{split}-{kind}-ubyte.gz').write_bytes(gzip.compress(raw))
            else:  (d / f'{split}-{kind}-ubyte').write_bytes(raw)


def write_tiny(root, wnids=('n01443537', 'n01629819', 'n01641577'), per_class=4, val_per_class=2, ext='JPEG'):
    from PIL import Image
    base = root / 'tiny-imagenet-200'
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    for w, col in zip(wnids, colours):
        d = base / 'train' / w / 'images'; d.mkdir(parents=True)
        for k in range(per_class): Image.new('RGB', (64, 64), col).save(d / f'{w}_{k}.{ext}')
        (base / 'train' / w / f'{w}_boxes.txt').write_text('')
    (base / 'val' / 'images').mkdir(parents=True)
    lines = []
    for k in range(val_per_class * len(wnids)):
        w = wnids[k % len(wnids)]
        Image.new('RGB', (64, 64), colours[k % len(wnids)]).save(base / 'val' / 'images' / f'val_{k}.{ext}')
        lines.append(f'val_{k}.{ext}\t{w}\t0\t0\t63\t63')
    (base / 'val' / 'val_annotations.txt').write_text('\n'.join(lines) + '\n')
    return colours


# ---------------------------------------------------------------------------------------------- formats
def test_cifar10_pickles(tmp_path):
    write_cifar10(tmp_path)
    dls = lt_dls('cifar10', ir=10, bs=8, path=tmp_path, download=False, device='cpu', verify=False)   # our files: not the official md5
    counts = lt_counts(20, 10, 10)
    x, y = check_dls(dls, 10, 3, 32, counts)
    # the pixels belong to their label (red plane = 2*label) and the planes are not transposed (blue is a ramp)
    assert torch.allclose(x[:, 0, 5, 5] * 255, (y * 2).float())
    assert torch.allclose(x[0, 2, 3] * 255, torch.arange(32.) * 8)
    # the subset is LDAM-DRW's draw over the full label vector
    full_y = np.tile(np.arange(10), 20)
    assert (dls.train_idx == lt_indices(full_y, counts, 0)).all()
    tx, ty = all_batches(dls.valid)
    assert len(ty) == 30 and np.bincount(ty.numpy()).tolist() == [3] * 10
    assert dls.loaders[2] is dls.test is dls.valid


def test_cifar100_pickles(tmp_path):
    write_cifar100(tmp_path)
    dls = lt_dls('cifar100', ir=3, bs=16, path=tmp_path, download=False, device='cpu', verify=False)
    x, y = check_dls(dls, 100, 3, 32, lt_counts(3, 100, 3))
    assert torch.allclose(x[:, 0, 0, 0] * 255, (y * 2).float())
    assert len(dls.test.dataset) == 100


def test_fashion_mnist_idx(tmp_path):
    write_fmnist(tmp_path / 'fm')
    dls = lt_dls('fashion_mnist', ir=4, bs=4, path=tmp_path / 'fm', download=False, device='cpu')
    x, y = check_dls(dls, 10, 1, 28, lt_counts(12, 10, 4))     # 12 per class: our files, not the system's 6000
    assert torch.allclose(x[:, 0, 14, 14] * 255, (y * 20).float())
    assert dls.augment == dict(pad=2, flip=True)


def test_fashion_mnist_plain_idx_and_torchvision_layout(tmp_path):
    write_fmnist(tmp_path / 'plain', train_per_class=6, gz=False)
    check_dls(lt_dls('fashion_mnist', ir=1, bs=4, path=tmp_path / 'plain', download=False, device='cpu'), 10, 1, 28, [6] * 10)
    # torchvision's <root>/FashionMNIST/raw, searched after the system copy's place: an explicit path skips the system copy
    write_fmnist(tmp_path / 'tv' / 'FashionMNIST' / 'raw', train_per_class=7)
    check_dls(lt_dls('fashion_mnist', ir=1, bs=4, path=tmp_path / 'tv', download=False, device='cpu'), 10, 1, 28, [7] * 10)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='dataset-fashion-mnist'):
        lt_dls('fashion_mnist', ir=1, path=tmp_path / 'empty', download=False)


def test_explicit_path_that_does_not_exist(tmp_path):
    "An explicit `path` is an error naming it when it does not exist, even where a system copy (Debian's Fashion-MNIST) exists"
    for name in ('fashion_mnist', 'cifar10'):
        for p in ('/no/such/dir', tmp_path / 'nowhere'):
            with pytest.raises(FileNotFoundError, match=re.escape(f"path='{p}' does not exist")):
                lt_dls(name, ir=10, path=p, download=False)
    # synthetic data reads nothing: a path is irrelevant there
    assert lt_dls('synthetic', ir=10, path='/no/such/dir', download=False, device='cpu').counts == lt_counts(200, 10, 10)


def test_default_path_still_finds_the_system_copy(monkeypatch, tmp_path):
    if not (Path('/usr/share/datasets/fashion-mnist') / 'train-images-idx3-ubyte.gz').exists():
        pytest.skip('Fashion-MNIST is not installed system-wide')
    monkeypatch.setenv('LTAT_DATA', str(tmp_path / 'empty-default'))
    assert lt_dls('fashion_mnist', ir=10, n_max=100, download=False, device='cpu').counts == lt_counts(100, 10, 10)


def test_truncated_idx(tmp_path):
    write_fmnist(tmp_path)
    f = tmp_path / 'train-images-idx3-ubyte.gz'
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw[:-100]))                    # a complete gzip stream of a short IDX file
    with pytest.raises(ValueError, match='truncated'): read_idx(f, 2051)
    with pytest.raises(ValueError, match='truncated'):
        lt_dls('fashion_mnist', ir=2, bs=4, path=tmp_path, download=False)
    f.write_bytes(gzip.compress(raw)[:-30])                     # a cut gzip stream
    with pytest.raises(CorruptFileError, match='truncated or corrupt'): read_idx(f)
    g = tmp_path / 'train-labels-idx1-ubyte.gz'
    with pytest.raises(ValueError, match='2051'): read_idx(g, 2051)   # labels where images are expected
    assert read_idx(g, 2049).shape == (120,)


def test_tiny_imagenet_folder(tmp_path):
    colours = write_tiny(tmp_path)
    dls = lt_dls('tiny_imagenet', ir=2, bs=2, path=tmp_path, download=False, device='cpu')
    x, y = check_dls(dls, 3, 3, 64, lt_counts(4, 3, 2))
    want = torch.tensor(colours, dtype=torch.float32)[y] / 255
    assert (x[:, :, 32, 32] - want).abs().max() < 0.05          # JPEG: close to the solid colour
    tx, ty = all_batches(dls.test)
    assert ty.tolist() == [0, 1, 2, 0, 1, 2]                     # labels from val_annotations.txt, sorted-wnid order
    assert (tx[:, :, 32, 32] - torch.tensor(colours, dtype=torch.float32)[ty] / 255).abs().max() < 0.05


def test_generic_image_folder(tmp_path):
    from PIL import Image
    for split, n in (('train', 3), ('val', 1)):
        for c, v in (('cat', 10), ('dog', 250)):
            d = tmp_path / split / c; d.mkdir(parents=True)
            for k in range(n): Image.new('RGB', (32, 32), (v, v, v)).save(d / f'{k}.png')   # resized to 64
    dls = lt_dls('tiny_imagenet', ir=1, bs=2, path=tmp_path, download=False, device='cpu')
    x, y = check_dls(dls, 2, 3, 64, [3, 3])
    assert torch.allclose(x[:, 0, 10, 10] * 255, torch.where(y == 0, 10., 250.))


def test_svhn_mat(tmp_path):
    sio = pytest.importorskip('scipy.io', reason='scipy is needed to write and read SVHN .mat files')
    for split, n in (('train', 5), ('test', 2)):
        y = np.tile(np.arange(1, 11), n)                       # SVHN labels 1..10, 10 = digit 0
        X = np.zeros((32, 32, 3, len(y)), np.uint8); X[:, :, 0, :] = (y % 10) * 20
        X[:, :, 1, :] = (np.arange(32, dtype=np.uint8) * 8)[None, :, None]   # green: a ramp along the columns (W)
        sio.savemat(tmp_path / f'{split}_32x32.mat', {'X': X, 'y': y[:, None].astype(np.uint8)})
    dls = lt_dls('svhn', ir=5, bs=4, path=tmp_path, download=False, device='cpu', verify=False)
    x, y = check_dls(dls, 10, 3, 32, lt_counts(5, 10, 5))
    assert torch.allclose(x[:, 0, 16, 16] * 255, (y * 20).float())   # label 10 became 0 together with its image
    tx, _ = all_batches(dls.test)
    assert torch.allclose(tx[0, 1, 5] * 255, torch.arange(32.) * 8)   # rows and columns not swapped
    assert dls.augment == dict(pad=4, flip=False)
    # torchvision's md5 check: our file is not the official one, and says how to get it
    with pytest.raises(CorruptFileError, match=r"train_32x32.mat failed torchvision's md5 check(.|\n)*housenumbers"):
        lt_dls('svhn', ir=5, bs=4, path=tmp_path, download=False)
    (tmp_path / 'test_32x32.mat').unlink()
    with pytest.raises(FileNotFoundError, match=r'test_32x32.mat(.|\n)*Looked in(.|\n)*To get it'):
        lt_dls('svhn', ir=5, bs=4, path=tmp_path, download=False, verify=False)


def test_cifar_integrity_and_missing_files(tmp_path):
    "torchvision's md5 check names the files that are not the official ones; a missing file names where ltat looked"
    write_cifar10(tmp_path)
    with pytest.raises(CorruptFileError, match=r"data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, "
                                               r"test_batch, batches.meta in .* failed torchvision's md5 check(.|\n)*cifar-10-python.tar.gz"):
        lt_dls('cifar10', ir=10, bs=8, path=tmp_path, download=False)
    raw = (tmp_path / 'cifar-10-batches-py' / 'data_batch_3').read_bytes()
    (tmp_path / 'cifar-10-batches-py' / 'data_batch_3').write_bytes(raw[:200])          # a cut pickle
    with pytest.raises(CorruptFileError, match='not readable CIFAR pickles'):
        lt_dls('cifar10', ir=10, bs=8, path=tmp_path, download=False, verify=False)
    (tmp_path / 'cifar-10-batches-py' / 'batches.meta').unlink()
    with pytest.raises(FileNotFoundError, match=r'batches.meta(.|\n)*cifar-10-batches-py(.|\n)*To get it'):
        lt_dls('cifar10', ir=10, bs=8, path=tmp_path, download=False, verify=False)


def test_synthetic_fastai_learner(tmp_path):
    from fastai.learner import Learner
    from fastai.callback.schedule import lr_find  # noqa: F401  (patches Learner.lr_find)
    dls = lt_dls('synthetic', ir=10, bs=32, device='cpu')
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    learn = Learner(dls, model, path=tmp_path)                 # loss from the dataset
    with learn.no_logging():
        learn.fit(1, 1e-2)
        preds, targs = learn.get_preds(ds_idx=2)
        learn.lr_find(num_it=10, show_plot=False)
    assert preds.shape == (500, 10) and targs.tolist() == dls.test.dataset.y.tolist()


def test_subset_seed_is_not_the_run_seed(tmp_path):
    "The official codes draw the subset with seed 0 whatever the run's seed: `seed` moves only the batches"
    write_cifar10(tmp_path, per_class_batch=20)                 # 100 images per class
    full_y = np.tile(np.arange(10), 100)
    mk = lambda **kw: lt_dls('cifar10', ir=10, bs=8, path=tmp_path, download=False, device='cpu', verify=False, **kw)
    runs = [mk(seed=s) for s in (0, 1, 7)]
    for d in runs:
        assert (d.train_idx == lt_indices(full_y, d.counts, 0)).all() and (d.subset_seed, d.counts) == (0, lt_counts(100, 10, 10))
    assert [d.seed for d in runs] == [0, 1, 7]
    assert not torch.equal(runs[0].one_batch()[1], runs[1].one_batch()[1])   # the shuffling follows `seed`
    other = mk(seed=0, subset_seed=3)
    assert other.subset_seed == 3 and (other.train_idx == lt_indices(full_y, other.counts, 3)).all()
    assert not (other.train_idx == runs[0].train_idx).all()
    # the hold-out follows the subset seed too
    h = [lt_dls('synthetic', ir=10, bs=16, n_holdout=5, device='cpu', **kw) for kw in (dict(seed=0), dict(seed=5), dict(subset_seed=5))]
    assert (h[0].holdout_idx == h[1].holdout_idx).all() and (h[0].train_idx == h[1].train_idx).all()
    assert not (h[0].holdout_idx == h[2].holdout_idx).all()


def test_holdout(tmp_path):
    dls = lt_dls('synthetic', ir=10, bs=16, n_holdout=5, device='cpu')
    assert dls.valid_split == 'holdout' and dls.holdout is dls.valid
    assert np.bincount(dls.valid.dataset.y.numpy()).tolist() == [5] * 10
    assert not set(dls.train_idx) & set(dls.holdout_idx)
    assert dls.counts == lt_counts(195, 10, 10)
    assert len(dls.loaders[2].dataset) == 500 and dls.loaders[2] is dls.test
    plain = lt_dls('synthetic', ir=10, bs=16, valid='test', device='cpu')
    assert plain.holdout is None and len(plain.valid.dataset) == 500


def test_lt_counts_tables():
    "The counts of LDAM-DRW's `get_img_num_per_cls` (kaidic/LDAM-DRW @ 2536330, imbalance_cifar.py), worked out by hand"
    assert lt_counts(5000, 10, 50) == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    assert lt_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert lt_counts(5000, 10, 10) == [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
    assert [sum(lt_counts(500, 100, ir)) for ir in (10, 50, 100)] == [19_573, 12_608, 10_847]
    assert sum(lt_counts(500, 200, 10)) == 39_072
    assert lt_counts(5000, 10, 100, 'step') == [5000] * 5 + [50] * 5
    assert lt_counts(10, 5, 2, 'step') == [10, 10, 5, 5, 5]
    assert lt_counts(7, 4, 1) == [7] * 4


def ldam_gen_imbalanced(targets, img_num_per_cls, seed=0):
    "LDAM-DRW's `gen_imbalanced_data` loop, transcribed independently"
    np.random.seed(seed)
    targets_np = np.array(targets, dtype=np.int64)
    selected = []
    for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selected.append(idx[:the_img_num])
    return np.concatenate(selected)


@pytest.mark.parametrize('ir,seed', [(100, 0), (10, 2)])
def test_lt_indices_matches_ldam(ir, seed):
    labels = np.random.default_rng(5).permutation(np.repeat(np.arange(10), 5000))
    counts = lt_counts(5000, 10, ir)
    assert (lt_indices(labels, counts, seed) == ldam_gen_imbalanced(labels, counts, seed)).all()
    assert (lt_indices(torch.from_numpy(labels), counts, seed) == ldam_gen_imbalanced(labels, counts, seed)).all()


def test_global_rng_untouched_and_seeds():
    labels = np.repeat(np.arange(10), 5000)
    np.random.seed(7); a = np.random.rand(); np.random.seed(7)
    idx0 = lt_indices(labels, lt_counts(5000, 10, 100), seed=0)
    assert np.random.rand() == a
    assert (idx0 == lt_indices(labels, lt_counts(5000, 10, 100), seed=0)).all()
    assert not (idx0 == lt_indices(labels, lt_counts(5000, 10, 100), seed=1)).all()


def test_groups_and_balanced():
    assert class_groups(10) == dict(head=[0, 1, 2], body=[3, 4, 5, 6], tail=[7, 8, 9])
    assert class_groups(100)['tail'] == list(range(67, 100))
    assert (tail_classes(10), tail_classes(100)[0], tail_classes(200)[0]) == ([9], 90, 180)
    labels = np.repeat(np.arange(3), [50, 10, 2])
    b = balanced_indices(labels, 20, seed=0)
    assert np.bincount(labels[b]).tolist() == [20, 20, 20]
    assert len(set(b[labels[b] == 0])) == 20 and set(np.where(labels == 2)[0]) <= set(b.tolist())
    # keep_all=False: the small classes are drawn with replacement only; the large ones are down-sampled as before
    b = balanced_indices(labels, 20, seed=0, keep_all=False)
    assert np.bincount(labels[b]).tolist() == [20, 20, 20] and len(set(b[labels[b] == 0])) == 20
    # up-sampling 10 images to 12: keep_all sees every image, 12 draws with replacement see all 10 with probability ~0.006
    small = np.repeat([0, 1], [40, 10])
    seen = lambda b: len(set(b[small[b] == 1].tolist()))
    assert all(seen(balanced_indices(small, 12, seed=s)) == 10 for s in range(20))
    assert sum(seen(balanced_indices(small, 12, seed=s, keep_all=False)) < 10 for s in range(20)) >= 18


def test_augment_and_loader():
    x = torch.rand(8, 3, 6, 6)
    out = batch_augment(x, pad=1, flip=True, generator=torch.Generator().manual_seed(0))
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for k in range(8):
        wins = [xp[k, :, a:a + 6, c:c + 6] for a in range(3) for c in range(3)]
        assert any(torch.equal(out[k], w) or torch.equal(out[k], w.flip(2)) for w in wins)
    # half of the images are mirrored, none without flip
    asym = torch.arange(6.).expand(400, 1, 6, 6)
    frac = (batch_augment(asym, 0, True, torch.Generator().manual_seed(2))[:, 0, 0, 0] == 5).float().mean().item()
    assert 0.4 < frac < 0.6 and torch.equal(batch_augment(asym, 0, False), asym)
    # crop offsets cover all of {0, ..., 2*pad} in both directions, as torchvision's RandomCrop
    x = torch.rand(1, 1, 5, 5).expand(300, 1, 5, 5)
    out = batch_augment(x, pad=2, flip=False, generator=torch.Generator().manual_seed(1))
    xp = torch.nn.functional.pad(x[:1], (2, 2, 2, 2))[0]
    seen = {(a, c) for k in range(300) for a in range(5) for c in range(5) if torch.equal(out[k], xp[:, a:a + 5, c:c + 5])}
    assert seen == {(a, c) for a in range(5) for c in range(5)}
    dls = lt_dls('synthetic', ir=1, bs=64, device='cpu')
    assert isinstance(dls.train, TensorDL) and len(dls.train) == 2000 // 64
    assert dls.augment == dict(pad=4, flip=True) and len(all_batches(dls.train)[1]) == 2000
    # training batches are augmented, validation batches are not; augment=False turns it off
    stored = {tuple(v.tolist()) for v in dls.train.dataset.x[:, 0, 10, 4:12]}
    xb, _ = dls.one_batch()
    assert sum(tuple((v * 255).round().long().tolist()) in stored for v in xb[:, 0, 10, 4:12]) < 48
    off = lt_dls('synthetic', ir=1, bs=64, augment=False, device='cpu')
    xb, _ = off.one_batch()
    assert all(tuple((v * 255).round().long().tolist()) in stored for v in xb[:, 0, 10, 4:12])
    xv, _ = dls.valid.one_batch()
    assert torch.equal(xv, dls.valid.dataset.x[:64].float() / 255)


def test_dataset_info_registry():
    for name in ('cifar10', 'cifar100', 'fashion_mnist', 'svhn', 'tiny_imagenet', 'synthetic'):
        info = dataset_info[name]
        for k in ('n_classes', 'in_ch', 'img_size', 'n_max', 'pad', 'flip', 'looks_in'): assert k in info
    assert (dataset_info['cifar10']['n_max'], dataset_info['fashion_mnist']['n_max']) == (5000, 6000)


# ---------------------------------------------------------------------------------------------- bad input
def test_ir_below_one():
    with pytest.raises(ValueError, match='0.5'): lt_counts(5000, 10, 0.5)
    with pytest.raises(ValueError, match='0.5'): lt_dls('synthetic', ir=0.5)


def test_unknown_profile():
    with pytest.raises(ValueError, match="'exp', 'step'"): lt_counts(5000, 10, 10, profile='linear')
    with pytest.raises(ValueError, match="'exp', 'step'"): lt_dls('synthetic', ir=10, profile='linear')


def test_unknown_dataset():
    with pytest.raises(ValueError, match="'cifar10'.*'synthetic'"): lt_dls('mnist', ir=10)


def test_counts_longer_than_classes():
    with pytest.raises(ValueError, match='11'): lt_indices(np.repeat(np.arange(10), 5), [1] * 11)


def test_count_above_class_size():
    with pytest.raises(ValueError, match='6'): lt_indices(np.repeat(np.arange(10), 5), [6] + [1] * 9)
    with pytest.raises(ValueError, match='300'): lt_dls('synthetic', ir=10, n_max=300)


def test_missing_data_path(tmp_path):
    missing = tmp_path / 'nowhere'
    for name in ('cifar10', 'cifar100', 'svhn', 'tiny_imagenet'):
        with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as e:
            lt_dls(name, ir=10, path=missing, download=False)
        assert 'To get it' in str(e.value)


def test_bs_larger_than_dataset():
    n = sum(lt_counts(200, 10, 10))
    with pytest.raises(ValueError, match=f'bs=5000.*{n}'): lt_dls('synthetic', ir=10, bs=5000)


def test_valid_holdout_needs_n_holdout():
    with pytest.raises(ValueError, match='n_holdout'): lt_dls('synthetic', ir=10, valid='holdout')


# ---------------------------------------------------------------------------------------------- ImageNet-LT, Tiny-ImageNet-LT
def write_imagenet_lt(root, counts=(6, 3, 1), n_val=2, n_test=2):
    "ImageNet in miniature (train/<wnid>/, val/<wnid>/, solid colours, varied sizes) and OLTR's three lists over it"
    from PIL import Image
    wnids, colours = ['n01440764', 'n01443537', 'n01484850'], [(220, 20, 20), (20, 220, 20), (20, 20, 220)]
    lines = {'train': [], 'val': [], 'test': []}
    for c, (w, col) in enumerate(zip(wnids, colours)):
        for split, sub, n in (('train', 'train', counts[c] + n_val), ('test', 'val', n_test)):
            d = root / sub / w; d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                name = f'{w}_{j}.JPEG' if sub == 'train' else f'ILSVRC2012_val_{c:04d}{j:04d}.JPEG'
                Image.new('RGB', (50 + 9 * j, 36 + 4 * c), col).save(d / name)
                lines['val' if sub == 'train' and j >= counts[c] else split].append(f'{sub}/{w}/{name} {c}')
    for s, ls in lines.items(): (root / f'ImageNet_LT_{s}.txt').write_text('\n'.join(ls) + '\n')
    return wnids


def test_imagenet_lt_lists(tmp_path):
    from ltat.data import imagenet_lt_dls, read_lt_list
    wnids = write_imagenet_lt(tmp_path)
    dls = imagenet_lt_dls(tmp_path, bs=2, size=32, num_workers=0, device='cpu')
    assert (dls.counts, dls.n_classes, list(dls.vocab), dls.valid_split) == ([6, 3, 1], 3, wnids, 'test')
    xb, yb = dls.one_batch()
    assert xb.shape == (2, 3, 32, 32) and 0 <= xb.min() and xb.max() <= 1
    assert (xb[:, :, 16, 16].argmax(1) == yb).all()                      # the pixels belong to their label
    x, y = zip(*dls.test)
    assert torch.cat(y).tolist() == [0, 0, 1, 1, 2, 2] and torch.cat(x).shape == (6, 3, 32, 32)
    dv = imagenet_lt_dls(tmp_path, bs=2, size=32, valid='val', num_workers=0, device='cpu')
    assert len(dv.valid.dataset) == 6 and dv.loaders[2] is dv.test and dv.holdout is dv.valid
    files, labels = read_lt_list(tmp_path / 'ImageNet_LT_train.txt')
    assert files[0] == tmp_path / 'train' / wnids[0] / f'{wnids[0]}_0.JPEG' and labels.tolist() == [0] * 6 + [1] * 3 + [2]
    (tmp_path / 'abs.txt').write_text('/train/n01440764/n01440764_0.JPEG 0\n')   # OLTR: a leading '/' is appended to the root
    assert read_lt_list(tmp_path / 'abs.txt', tmp_path)[0][0] == Path(str(tmp_path) + '/train/n01440764/n01440764_0.JPEG')
    (tmp_path / 'bad.txt').write_text('a.JPEG 0\nb.JPEG zero\n')
    with pytest.raises(CorruptFileError, match='line 2'): read_lt_list(tmp_path / 'bad.txt')
    (tmp_path / 'train' / wnids[2] / f'{wnids[2]}_0.JPEG').unlink()
    with pytest.raises(FileNotFoundError, match='1 of the 10 images of ImageNet_LT_train.txt are missing'):
        imagenet_lt_dls(tmp_path, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r'ImageNet_LT_train.txt(.|\n)*Looked in(.|\n)*OpenLongTailRecognition-OLTR'):
        imagenet_lt_dls(tmp_path / 'none', num_workers=0)


def test_tiny_imagenet_lt_as_robustlt(tmp_path):
    "RobustLT's Tiny-ImageNet-LT: the first 20 classes, exp profile, one default_rng(seed) shuffling class by class"
    from ltat.data import tiny_imagenet_lt_dls, robustlt_split
    from PIL import Image
    base = tmp_path / 'tiny-imagenet-200'
    wn = [f'n{k:08d}' for k in range(22)]
    for k, w in enumerate(wn):
        d = base / 'train' / w / 'images'; d.mkdir(parents=True)
        for j in range(6): Image.new('RGB', (64, 64), (10 * k, 30 * j, 0)).save(d / f'{w}_{j}.JPEG')
    (base / 'val' / 'images').mkdir(parents=True)
    (base / 'val' / 'val_annotations.txt').write_text(''.join(f'v{k}.JPEG\t{w}\t0\t0\t1\t1\n' for k, w in enumerate(wn)))
    for k in range(22): Image.new('RGB', (64, 64), (10 * k, 0, 0)).save(base / 'val' / 'images' / f'v{k}.JPEG')
    dls = tiny_imagenet_lt_dls(tmp_path, ir=6, bs=4, device='cpu')
    want = [int(6. * (1 / 6) ** (i / 19)) for i in range(20)]
    assert dls.counts == want and want[0] == 6 and want[-1] == 1
    # independent: the loop of RobustLT's `_generate_splits`, train part then validation part
    rng, tr, va = np.random.default_rng(102), [], []
    for c, n in enumerate(want):
        idx = np.arange(120)[np.repeat(np.arange(20), 6) == c]; rng.shuffle(idx)
        tr += list(idx[:n - int(n * 0.2)]); va += list(idx[n - int(n * 0.2):n])
    assert dls.train_idx.tolist() == tr + va
    x, y = all_batches(dls.train)
    assert torch.allclose(x[:, 0, 3, 3] * 255, (y * 10).float(), atol=3)      # JPEG: close to 10 * class
    assert all_batches(dls.test)[1].tolist() == list(range(20))                 # val images of the 20 kept classes only
    other = tiny_imagenet_lt_dls(tmp_path, ir=6, bs=4, device='cpu', seed=103)
    assert other.counts == want and other.train_idx.tolist() != dls.train_idx.tolist()
    assert tuple(map(len, robustlt_split(np.repeat(np.arange(20), 6), want, 102))) == (len(tr), len(va))
    # the first 20 classes through `lt_dls` too: LDAM-DRW's draw over them (AT-BSL's protocol on RobustLT's classes)
    ldam = lt_dls('tiny_imagenet', ir=6, n_classes=20, bs=4, path=tmp_path, download=False, device='cpu')
    assert ldam.counts == lt_counts(6, 20, 6) and (ldam.train_idx == lt_indices(np.repeat(np.arange(20), 6), ldam.counts, 0)).all()
    assert list(ldam.vocab) == wn[:20] and len(ldam.test.dataset) == 20


def test_imagenet64_lt_as_robustlt(tmp_path):
    "RobustLT's ImageNet-LT: Downsampled ImageNet 64x64 npz batches, labels 1..20 kept as 0..19, RobustLT's draw"
    from ltat.data import imagenet64_lt_dls, read_imagenet64, robustlt_split
    def batch(labels):
        planes = np.zeros((len(labels), 3, 64, 64), np.uint8)
        planes[:, 0] = (labels * 10)[:, None, None]; planes[:, 2] = np.arange(64, dtype=np.uint8)[None, :, None] * 4  # blue: a ramp down the rows
        return dict(data=planes.reshape(len(labels), -1), labels=labels)
    lab = np.tile(np.arange(1, 24), 3)                                   # 23 classes, 3 per batch file
    for b in range(1, 11): np.savez(tmp_path / f'train_data_batch_{b}.npz', **batch(lab))
    np.savez(tmp_path / 'val_data.npz', **batch(np.arange(1, 24)))
    dls = imagenet64_lt_dls(tmp_path, ir=10, bs=4, device='cpu')
    want = [int(30. * 0.1 ** (i / 19)) for i in range(20)]
    assert dls.counts == want and (dls.n_classes, dls.img_size) == (20, 64)
    y_all = np.tile(np.arange(20), 30)
    assert dls.train_idx.tolist() == np.concatenate(robustlt_split(y_all, want, 102)).tolist()
    x, y = all_batches(dls.train)
    assert torch.allclose(x[:, 0, 9, 9] * 255, ((y + 1) * 10).float()) and torch.allclose(x[0, 2, :, 3] * 255, torch.arange(64.) * 4)
    assert all_batches(dls.test)[1].tolist() == list(range(20))
    (tmp_path / 'train_data_batch_7.npz').unlink()
    with pytest.raises(FileNotFoundError, match=r'train_data_batch_7.npz(.|\n)*Downsampled ImageNet'): read_imagenet64(tmp_path)
    (tmp_path / 'train_data_batch_7.npz').write_bytes(b'not an npz')
    with pytest.raises(CorruptFileError, match='train_data_batch_7.npz'): read_imagenet64(tmp_path)
