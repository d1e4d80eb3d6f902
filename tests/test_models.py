"Smoke and correctness tests for `ltat.models`, one parametrised test per property over the registry (CPU, fast)."
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltat.models import (DATASET_STATS, HEADS, MODELS, CosineHead, LTModel, Normalize, create_model, list_heads,
                         list_models, lt_splitter)

# reduced widths: same code paths as the full models, a fraction of the CPU time
SMALL = {'resnet18': dict(width=8), 'preact_resnet18': dict(width=8), 'wrn34_10': dict(widen=1),
         'wrn28_10': dict(widen=1), 'small_cnn': dict(width=8, hidden=32)}
FEAT = {'resnet18': 64, 'preact_resnet18': 64, 'wrn34_10': 64, 'wrn28_10': 64, 'small_cnn': 32}


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Tiny tensors gain nothing from intra-op threads, and on a shared CPU the thread barriers stall (50 s vs 4 s)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_model(arch, n_classes=5, **kw):
    torch.manual_seed(0)
    return create_model(arch, n_classes, **{**SMALL[arch], **kw})


def test_registry():
    assert list_models() == list(MODELS)
    assert set(list_models()) == {'resnet18', 'preact_resnet18', 'wrn34_10', 'wrn28_10', 'small_cnn'}
    assert set(list_heads()) == set(HEADS) == {'linear', 'cosine', 'tde'}
    assert set(SMALL) == set(list_models()), "add the new model to SMALL/FEAT"


def test_tde_head_by_name():
    "`head='tde'` builds RoBal's TDE head: training forwards move the running direction, eval applies the TDE branch"
    from ltat.lt_at import TDEHead, TDEPost
    m = small_model('small_cnn', n_classes=4, head='tde', in_ch=1)
    assert isinstance(m.head, TDEHead) and (m.head.scale, m.head.gamma, m.head.alpha) == (16.0, 1 / 32, 0.1)
    x = torch.rand(6, 1, 28, 28)
    m.train(); m(x)
    assert torch.count_nonzero(m.head.direction) > 0
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), TDEPost(m)(x))
        d = m.head.direction; ff = m.features(x); W = m.head.weight / (m.head.weight.norm(dim=1, keepdim=True) + 1 / 32)
        cos = (ff * d).sum(1, keepdim=True) / ff.norm(dim=1, keepdim=True) / d.norm()
        torch.testing.assert_close(m(x), 16 * (F.normalize(ff, dim=1) - 0.1 * d * cos) @ W.t())   # hand-written TDE branch
    assert 'head.direction' in m.state_dict()


@pytest.mark.parametrize('arch', list_models())
@pytest.mark.parametrize('head', ['linear', 'cosine'])
def test_forward_and_features(arch, head):
    m = small_model(arch, head=head)
    assert isinstance(m, LTModel)
    x = torch.rand(3, 3, 32, 32)
    out = m(x)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 5)
    assert m.feat_dim == FEAT[arch]
    assert m.features(x).shape == (3, m.feat_dim)
    m.eval()
    torch.testing.assert_close(m(x), m.head(m.features(x)))


@pytest.mark.parametrize('arch', list_models())
@pytest.mark.parametrize('size', [28, 64])
def test_input_sizes(arch, size):
    m = small_model(arch, in_ch=1)
    assert m(torch.rand(2, 1, size, size)).shape == (2, 5)


@pytest.mark.parametrize('arch', list_models())
@pytest.mark.parametrize('head', ['linear', 'cosine'])
def test_every_parameter_gets_a_finite_gradient(arch, head):
    m = small_model(arch, head=head, **({'scale': 10.} if head == 'cosine' else {}))
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(m(x), y).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize('arch', list_models())
def test_input_gradient_for_attacks(arch):
    m = small_model(arch).eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    g, = torch.autograd.grad(F.cross_entropy(m(x), torch.tensor([0, 1])), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize('arch', list_models())
def test_train_eval_modes(arch):
    m = small_model(arch)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert bns, "every backbone uses BatchNorm"
    m.eval()
    assert not any(mod.training for mod in m.modules())
    x = torch.rand(4, 3, 32, 32)
    before = [b.running_mean.clone() for b in bns]
    with torch.no_grad(): o1, o2 = m(x), m(x)
    torch.testing.assert_close(o1, o2)                                        # deterministic in eval
    assert all(torch.equal(b.running_mean, r) for b, r in zip(bns, before))   # eval does not move BN stats
    torch.testing.assert_close(m(x[:1]), o1[:1])                              # eval: no batch dependence
    m.train()
    assert all(mod.training for mod in m.modules())
    with torch.no_grad(): m(x)
    assert any(not torch.equal(b.running_mean, r) for b, r in zip(bns, before))  # train updates BN stats


@pytest.mark.parametrize('arch,known', [('wrn34_10', 46_160_474), ('wrn28_10', 36_479_194)])
def test_full_wrn(arch, known):
    m = create_model(arch, 10).eval()
    assert sum(p.numel() for p in m.parameters()) == known
    assert m.feat_dim == 640
    with torch.no_grad(): out = m(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize('arch,n_classes,known', [('resnet18', 10, 11_173_962), ('preact_resnet18', 10, 11_172_170),
                                                  ('preact_resnet18', 200, 11_269_640)])
def test_full_resnet_param_counts(arch, n_classes, known):
    m = create_model(arch, n_classes)
    assert sum(p.numel() for p in m.parameters()) == known and m.feat_dim == 512


def test_small_cnn_param_count():
    # conv 1->32, BN, conv 32->64, BN, FC 64*4*4->128, FC 128->10
    expected = 9 * 32 + 64 + 9 * 32 * 64 + 128 + (1024 * 128 + 128) + (128 * 10 + 10)
    m = create_model('small_cnn', 10, in_ch=1)
    assert sum(p.numel() for p in m.parameters()) == expected and m.feat_dim == 128


def cosine_by_hand(W, f, scale, gamma):
    out = np.zeros((len(f), len(W)))
    for b in range(len(f)):
        for i in range(len(W)):
            fn, wn = math.sqrt(sum(v * v for v in f[b])), math.sqrt(sum(v * v for v in W[i]))
            out[b, i] = scale * sum(f[b, k] / fn * W[i, k] / (wn + gamma) for k in range(W.shape[1]))
    return out


@pytest.mark.parametrize('scale,gamma', [(1., 1 / 32), (10., 1 / 16), (16., 0.)])
def test_cosine_head_by_hand(scale, gamma):
    rng = np.random.default_rng(1)
    W, f = rng.normal(size=(4, 6)), rng.normal(size=(3, 6)) * 3
    h = CosineHead(6, 4, scale=scale, gamma=gamma)
    with torch.no_grad(): h.weight.copy_(torch.tensor(W))
    np.testing.assert_allclose(h(torch.tensor(f, dtype=torch.float32)).detach().numpy(),
                               cosine_by_hand(W, f, scale, gamma), rtol=1e-5, atol=1e-5)


def test_cosine_head_defaults_and_init():
    h = CosineHead(640, 10)
    assert h.scale == 1.0 and h.gamma == 1 / 32 and h.bias is None
    assert h.weight.abs().max() <= 1 / math.sqrt(640)
    assert [n for n, _ in h.named_parameters()] == ['weight']


@pytest.mark.parametrize('gamma', [0., 1 / 32])
@pytest.mark.parametrize('arch', ['small_cnn', 'resnet18'])
def test_cosine_head_bounded(arch, gamma):
    s = 7.
    m = small_model(arch, head='cosine', scale=s, gamma=gamma)
    with torch.no_grad(): m.head.weight.mul_(torch.logspace(-2, 2, 5)[:, None])
    z = m(torch.rand(8, 3, 32, 32) * 50 - 25)                # far outside [0,1]: the bound must still hold
    assert z.abs().max() <= s + 1e-5
    h = m.head
    with torch.no_grad():
        f = torch.randn(64, h.feat_dim) * torch.logspace(-3, 3, 64)[:, None]
        torch.testing.assert_close(h(5 * f), h(f))           # invariant to the feature norm
        zi = h(h.weight.clone()).diag()                      # f along W_i reaches s ||W_i|| / (||W_i|| + gamma)
        wn = h.weight.norm(dim=1)
        torch.testing.assert_close(zi, s * wn / (wn + gamma))
    if gamma == 0: torch.testing.assert_close(zi, torch.full_like(zi, s))


def test_cosine_kwargs_flow_through_create_model():
    m = create_model('resnet18', 10, head='cosine', scale=10., gamma=0.)
    assert isinstance(m.head, CosineHead) and m.head.scale == 10. and m.head.gamma == 0.
    assert create_model('small_cnn', 3, head='cosine', bias=True).head.bias.shape == (3,)
    assert create_model('small_cnn', 3, bias=False).head.bias is None
    m = create_model('wrn28_10', 3, depth=10, widen=2)
    assert m.feat_dim == 128


def test_normalize():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    n = Normalize(mean, std)
    x = torch.rand(2, 3, 5, 5)
    exp = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], 1)
    torch.testing.assert_close(n(x), exp)
    assert list(n.parameters()) == [] and set(n.state_dict()) == {'mean', 'std'}
    with pytest.raises(ValueError): Normalize((0.5,), (0.,))
    with pytest.raises(ValueError): Normalize((0.5, 0.5), (0.2,))


def test_normalisation_inside_model():
    m = create_model('small_cnn', 4)
    assert isinstance(m.norm, nn.Identity)                   # default: no normalisation, as the LT repos
    st = DATASET_STATS['cifar10']
    m = create_model('small_cnn', 4, **st).eval()
    x = torch.rand(2, 3, 32, 32)
    xn = (x - torch.tensor(st.mean).view(1, 3, 1, 1)) / torch.tensor(st.std).view(1, 3, 1, 1)
    torch.testing.assert_close(m.features(x), m.body(xn))
    torch.testing.assert_close(m(x), m.head(m.body(xn)))
    assert not any(n.startswith('norm') for n, _ in m.named_parameters())
    mean, std = DATASET_STATS['fashion_mnist']
    assert create_model('small_cnn', 10, in_ch=1, mean=mean, std=std)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match='both mean and std'): create_model('small_cnn', 4, mean=st.mean)
    with pytest.raises(ValueError, match='in_ch'): create_model('small_cnn', 4, in_ch=1, **st)


def test_dataset_stats():
    assert set(DATASET_STATS) == {'cifar10', 'cifar100', 'svhn', 'tiny_imagenet', 'fashion_mnist'}
    for name, st in DATASET_STATS.items():
        assert len(st.mean) == len(st.std) and all(0 < v < 1 for v in st.mean + st.std), name


def test_splitter():
    m = small_model('small_cnn', head='cosine')
    groups = lt_splitter(m)
    assert len(groups) == 2 and groups[1] == [m.head.weight]
    assert sum(len(g) for g in groups) == len(list(m.parameters()))


@pytest.mark.parametrize('bad', ['resnet_no_such', 'ResNet-18', 'vit'])     # resnet50 is a timm name
def test_unknown_arch(bad):
    with pytest.raises(ValueError) as e: create_model(bad, 10)
    msg = str(e.value)
    assert repr(bad) in msg and all(name in msg for name in list_models())


@pytest.mark.parametrize('bad', ['dot', 'tde_post', 'Linear'])
def test_unknown_head(bad):
    with pytest.raises(ValueError) as e: create_model('small_cnn', 10, head=bad)
    msg = str(e.value)
    assert repr(bad) in msg and all(name in msg for name in list_heads())


def test_unknown_kwargs():
    with pytest.raises(TypeError, match="'scale'"): create_model('small_cnn', 10, scale=10.)   # linear head: no scale
    with pytest.raises(ValueError, match="'widen'"): create_model('resnet18', 10, widen=2)
    with pytest.raises(TypeError, match='accepts'): create_model('wrn34_10', 10, widht=2)


@pytest.mark.parametrize('n_classes', [0, -1, 2.5, True])
def test_bad_n_classes(n_classes):
    with pytest.raises(ValueError, match='n_classes'): create_model('small_cnn', n_classes)


def test_bad_head_args():
    with pytest.raises(ValueError, match='scale'): CosineHead(8, 2, scale=0.)
    with pytest.raises(ValueError, match='gamma'): CosineHead(8, 2, gamma=-1.)
    with pytest.raises(ValueError, match='6n\\+4'): create_model('wrn34_10', 10, depth=33)


# ---- timm backbones (optional dependency; the tiny models are built from random weights: nothing is downloaded)
TINY_VIT = dict(img_size=32, patch_size=4, depth=2, embed_dim=48, num_heads=3)


def test_timm_vit_with_cosine_head_and_normalisation():
    "A DeiT through create_model: timm's pooled feature of the normalised image, ltat's cosine head on it"
    import timm
    from ltat.models import TimmBody
    torch.manual_seed(0)
    st = DATASET_STATS['cifar10']
    m = create_model('deit_small_patch16_224', 10, head='cosine', **st, **TINY_VIT).eval()
    assert isinstance(m.body, TimmBody) and isinstance(m.head, CosineHead) and isinstance(m.norm, Normalize)
    assert m.feat_dim == 48 and m.arch == 'deit_small_patch16_224' and m.n_classes == 10
    x = torch.rand(4, 3, 32, 32)
    xn = (x - torch.tensor(st.mean).view(1, 3, 1, 1)) / torch.tensor(st.std).view(1, 3, 1, 1)
    # an independent timm model with the same weights, fed the normalised image by hand
    ref = timm.create_model('deit_small_patch16_224', num_classes=0, **TINY_VIT).eval()
    ref.load_state_dict(m.body.net.state_dict())
    with torch.no_grad():
        f = m.features(x)
        torch.testing.assert_close(f, ref(xn))
        w = m.head.weight / (m.head.weight.norm(dim=1, keepdim=True) + 1 / 32)
        torch.testing.assert_close(m(x), F.normalize(f, dim=1) @ w.t())        # RoBal's cosine head, written out
    assert m(x).shape == (4, 10) and m(x).abs().max() <= 1


def test_timm_backbone_trains_and_attacks():
    "Every parameter gets a finite gradient, the input gets one (what PGD needs), and the splitter sees body and head"
    from ltat.attacks import pgd
    torch.manual_seed(0)
    m = create_model('deit_tiny_patch16_224', 5, **TINY_VIT)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 5, (4,))
    F.cross_entropy(m(x), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)
    m.eval()
    xa = pgd(m, x, y, eps=8 / 255, alpha=2 / 255, steps=3)
    assert (xa - x).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(xa, x)
    with torch.no_grad(): assert F.cross_entropy(m(xa), y) > F.cross_entropy(m(x), y)
    body, head = lt_splitter(m)
    assert len(body) + len(head) == len(list(m.parameters())) and head == list(m.head.parameters())


def test_timm_names():
    "ltat's names stay ltat's; 'timm:' forces timm; a CNN from timm on one-channel input; timm checks its own keywords"
    import timm
    from ltat.models import ResNet, TimmBody
    assert isinstance(create_model('resnet18', 5).body, ResNet)
    m = create_model('timm:resnet18', 5, in_ch=1)
    assert isinstance(m.body, TimmBody) and isinstance(m.body.net, timm.models.resnet.ResNet) and m.feat_dim == 512
    assert m(torch.rand(2, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(TypeError, match='no_such_option'): create_model('deit_tiny_patch16_224', 5, no_such_option=1, **TINY_VIT)
    with pytest.raises(ValueError, match='timm'): create_model('resnet_no_such', 5)


def test_timm_pretrained_weights_bring_their_normalisation(tmp_path):
    "pretrained=True loads timm's weights (here a local file, no download) and normalises with the statistics they expect"
    import timm
    src = timm.create_model('deit_tiny_patch16_224', **TINY_VIT)
    torch.save(src.state_dict(), tmp_path / 'w.pth')
    m = create_model('deit_tiny_patch16_224', 10, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'w.pth')), **TINY_VIT)
    sd = m.body.net.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in src.state_dict().items() if not k.startswith('head.'))
    assert isinstance(m.norm, Normalize)
    torch.testing.assert_close(m.norm.mean.flatten(), torch.tensor(timm.data.IMAGENET_DEFAULT_MEAN))
    torch.testing.assert_close(m.norm.std.flatten(), torch.tensor(timm.data.IMAGENET_DEFAULT_STD))
    m2 = create_model('deit_tiny_patch16_224', 10, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'w.pth')),
                      mean=(0.5,) * 3, std=(0.25,) * 3, **TINY_VIT)                   # given statistics win
    torch.testing.assert_close(m2.norm.mean.flatten(), torch.full((3,), 0.5))
