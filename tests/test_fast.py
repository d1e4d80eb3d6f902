"The fast path (ltat.fast) and `ltat bench` (ltat.bench), on CPU."
import math
import pytest, torch, torch.nn as nn
from fastai.optimizer import SGD, OptimWrapper
from ltat.data import lt_dls
from ltat.models import create_model
from ltat.learner import adv_learner
from ltat.fast import enable_fast, FastPath, LazyProgress, fast_safe
from ltat.bench import run_bench, format_table, ROWS, forward_flops, pgd_train_flops, count_syncs

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def dls(): return lt_dls('synthetic', 5, bs=32, in_ch=1, img_size=16, n_per_class=48, n_test=8, device='cpu')

def _learn(dls, fast, seed=0):
    torch.manual_seed(seed)
    return adv_learner(dls, create_model('small_cnn', 10, in_ch=1, width=8), steps=3, rob_steps=3, fast=fast)

def _fast_cbs(learn): return [c for c in learn.cbs if isinstance(c, (FastPath, LazyProgress))]

def test_noop_on_cpu_unless_forced(dls):
    assert not fast_safe(nn.Linear(2, 2))
    for fast in (False,):
        l = _learn(dls, fast)
        assert _fast_cbs(l) == [] and l.adv_train.attack_dtype is None and l.opt_func.func is SGD
        assert not getattr(l, 'fast', False)
    l = _learn(dls, False); before = (list(l.cbs), l.opt_func)
    enable_fast(l)                                        # not forced: nothing changes on CPU
    assert (list(l.cbs), l.opt_func) == before

def test_forced_switches_training_only(dls):
    l = _learn(dls, True)
    assert l.adv_train.attack_dtype == torch.bfloat16 and l.opt_func.func is OptimWrapper
    fp = [c for c in l.cbs if isinstance(c, FastPath)]
    assert len(fp) == 1 and fp[0].run_valid is False      # validation (and the robust metric) stays float32
    assert isinstance(l.progress, LazyProgress)
    assert l.metrics[-1].attack_kw.get('dtype') is None    # the robust metric's attack is float32

def test_forced_fast_trains_like_default(dls):
    res = {}
    for fast in (False, True):
        dls.loaders[0] = dls.train.new()          # fresh generator: both runs see the same batches
        l = _learn(dls, fast)
        with l.no_bar(), l.no_logging(): l.fit(4, 0.05)
        assert all(math.isfinite(float(x)) for x in l.recorder.losses)
        assert all(p.is_contiguous() for p in l.model.parameters())   # channels_last undone after fit
        assert (type(l.recorder.smooth_loss).__name__ == 'DeviceSmoothLoss') == fast   # no per-batch copy to the CPU
        assert all(isinstance(x, torch.Tensor) and x.device.type == 'cpu' for x in l.recorder.losses)
        res[fast] = l.recorder.values[-1][-1]                          # rob_acc on the test set
    # same seeds and batches, bf16 rounding only; on this problem two seeds of the float32 path differ by ~0.2
    assert abs(res[True] - res[False]) <= 0.15, res

def test_flops_hand_computed():
    assert forward_flops(nn.Conv2d(3, 8, 3, padding=1), torch.zeros(2, 3, 32, 32)) == 2 * 8 * 32 * 32 * 3 * 9
    assert pgd_train_flops(2., 10) == 46.

def test_count_syncs_restores():
    orig = torch.Tensor.item
    with count_syncs() as s: torch.ones(2).sum().item()
    assert s['host_reads'] == 1 and torch.Tensor.item is orig

def test_bench_quick_smoke(capsys):
    df, meta = run_bench(quick=True, n_per_class=48, n_test=2, steps=1, epochs=1, bs=32, eval_n=20)
    assert list(df.index) == list(ROWS)
    assert (df.epoch_s > 0).all() and (df.img_per_s > 0).all()
    assert df.x_vs_a['(a) reference'] == pytest.approx(1.) and df.x_vs_c['(c) raw loop'] == pytest.approx(1.)
    s = format_table(df, meta)
    for r in ROWS: assert r in s
    assert 'no GPU here' in s and meta['fast_path_active'] is False

def test_bench_cli_registered():
    from ltat.cli import COMMANDS
    assert 'bench' in COMMANDS

def test_bench_extra_smoke():
    "WRN/AutoAttack timing path, with a tiny model on CPU"
    from ltat.bench import bench_extra
    ex = bench_extra('cpu', n_train=1000, n_batches=1, bs=16, aa_n=20, aa_bs=20, steps=1, model=create_model('small_cnn', 10, width=4))
    assert ex['aa_n'] == 20 and ex['epoch_s'] > 0 and ex['aa_s'] > 0 and 0 <= ex['aa_rob_acc'] <= 1

def test_bench_fast_path_removes_per_batch_reads():
    "Forced fast path: the smooth loss stays on the device, so no host read per training batch remains"
    df, meta = run_bench(quick=True, n_per_class=48, n_test=2, steps=1, epochs=1, bs=16, eval_n=16, variants='bd', force_fast=True)
    n_batches = meta['n_train'] // 16
    assert list(df.index) == ['(b) adv_learner', '(d) fast path'] and meta['fast_path_active']
    assert df.host_reads_per_batch['(b) adv_learner'] >= 1                       # fastai's AvgSmoothLoss: .cpu() per batch
    assert df.host_reads_per_batch['(d) fast path'] * n_batches <= 2             # only check_range, once per fit

def test_enable_fast_decides_by_the_data_device():
    "The model is still on the CPU when adv_learner returns; the fast path follows the device the data (and fit) use"
    from types import SimpleNamespace
    from ltat.fast import enable_fast
    on_cpu = SimpleNamespace(dls=SimpleNamespace(device=torch.device('cpu')), model=torch.nn.Linear(2, 2), cbs=[])
    assert enable_fast(on_cpu) is on_cpu and not hasattr(on_cpu, 'fast')
    if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        gpu_data = SimpleNamespace(dls=SimpleNamespace(device=torch.device('cuda')), model=torch.nn.Linear(2, 2), cbs=[])
        assert enable_fast(gpu_data) is gpu_data and not hasattr(gpu_data, 'fast')   # no usable GPU here: stays off, no error

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (run on a GPU machine)')
def test_fast_path_on_by_default_on_gpu():
    from ltat.data import lt_dls
    from ltat.learner import adv_learner
    dls = lt_dls('synthetic', 10, bs=32, in_ch=1, img_size=28, n_per_class=40, n_test=10, device='cuda')
    learn = adv_learner(dls, 'small_cnn')            # model built on the CPU, data on the GPU
    assert getattr(learn, 'fast', False) == torch.cuda.is_bf16_supported()
