"""Data-parallel training on DistributedDataParallel: 2 gloo processes against 1 on the same global batch give the same
weights, counts and metrics for every method; `ltat train` under `torchrun --nproc_per_node 2` writes one set of outputs."""
import os, sys, json, signal, subprocess, time, warnings
from pathlib import Path
import pytest, torch, torch.nn as nn
import torch.distributed as dist, torch.multiprocessing as mp
from fastai.callback.core import Callback
from ltat.core import dist_sum
from ltat.data import lt_dls
import ltat.all, ltat.attacks   # ltat.all registers every method of every chapter
from ltat.learner import adv_learner, AdvTrain, RobustAccuracy
from ltat.fast import distrib_fit_ctx, DistribTrain
from ltat.lt_at import finetune

torch.set_num_threads(1)
N_CLS, EPOCHS = 4, 2
METHODS = ('pgd_at', 'trades', 'reat', 'robal', 'self_distill')
ROOT = Path(__file__).resolve().parents[1]

class AdvPredCounts(Callback):
    "Toy method state: per-class counts of predictions on the training shard, summed at epoch end (ltat's convention)"
    order, run_valid = AdvTrain.order + 1, False
    def __init__(self, n_classes): self.n_classes, self.history = n_classes, []
    def before_train(self): self.acc = torch.zeros(self.n_classes, dtype=torch.long)
    def after_pred(self): self.acc += torch.bincount(self.learn.pred.argmax(1), minlength=self.n_classes)
    def after_train(self): self.history.append(dist_sum(self.acc.clone()))

class Tiny(nn.Module):
    "No BatchNorm (per-process batch statistics legitimately differ; SyncBatchNorm is GPU-only); a `.head` as REAT needs"
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Linear(8 * 16, N_CLS)
    def forward(self, x): return self.head(self.body(x))

def _det_init(x, eps, init):
    "The attacks' random starts, drawn per image from its own pixels: a share of a batch starts where the whole batch does"
    if init == 'none': return x.clone()
    pos = torch.arange(x[0].numel(), dtype=x.dtype, device=x.device).view_as(x[0])
    u = (torch.sin(x * 12.9898 + pos * 78.233) * 43758.5453).remainder(1.0)            # in [0, 1), a function of the image
    d = {'uniform': (2 * u - 1) * eps, 'normal': 0.001 * (2 * u - 1), 'onesided': eps * u}[init]
    return (x + d).clamp(0, 1)

def _method_kw(method, tmp):
    kw = {}
    if method == 'reat': kw['tail'] = False          # TAIL's per-batch feature statistics differ per share (as BatchNorm's)
    if method == 'self_distill': kw.update(teacher_epochs=1, teacher_bs=8, teacher_dir=tmp)
    return kw

def _train(method, tmp):
    "The same tiny run in every process, inside `distrib_fit_ctx` (DDP over the initialised group)"
    ltat.attacks._init = _det_init     # each method keeps its own start ('uniform', TRADES' 'normal', RoBal's 'onesided')
    dls = lt_dls('synthetic', 2, bs=16, in_ch=1, img_size=8, n_classes=N_CLS, n_per_class=32, n_test=9, device='cpu',
                 augment=False)   # augmentation draws per rank (its own stream): off, so both runs see the same images
    torch.manual_seed(0)
    counts = AdvPredCounts(N_CLS)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')              # RoBal's advice to use a cosine head
        learn = adv_learner(dls, Tiny(), method=method, steps=2, robust_metric=False, fast=False, cbs=counts,
                            metrics=RobustAccuracy(steps=2, init='none'), **_method_kw(method, tmp))
        with learn.no_bar(), learn.no_logging(), distrib_fit_ctx(learn): learn.fit(EPOCHS, 0.05)
    reat = [c for c in learn.cbs if type(c).__name__ == 'REATTrain']
    return dict(values=[[float(v) for v in vs] for vs in learn.recorder.values], counts=torch.stack(counts.history),
                weights=torch.cat([p.detach().flatten() for p in learn.model.parameters()]),
                ae_counts=reat[0].ae_counts.detach().cpu().clone() if reat else None,
                n_train=len(dls.train) * dls.train.bs, n_valid=len(dls.valid.dataset),
                had_cb=any(isinstance(c, DistribTrain) for c in learn.cbs), is_module=type(learn.model) is Tiny)

FT_KINDS = ('rs', 'lws', 'rw')

def _finetune(kind):
    "RoBal's one-epoch fine-tuning after a PGD-AT epoch: 'rs' and 'lws' (class-aware order, frozen body) and 'rw' (re-weighted)"
    dls = lt_dls('synthetic', 2, bs=16, in_ch=1, img_size=8, n_classes=N_CLS, n_per_class=32, n_test=9, device='cpu', augment=False)
    torch.manual_seed(0)
    learn = adv_learner(dls, Tiny(), method='pgd_at', steps=1, robust_metric=False, fast=False)
    with learn.no_bar(), learn.no_logging(), distrib_fit_ctx(learn): learn.fit(1, 0.05)
    ft = finetune(learn, kind, lr=0.05)                 # its fit runs data-parallel itself (`distrib_fit_ctx` inside)
    return torch.cat([p.detach().flatten() for p in ft.model.parameters()])

# `ltat train` on both sides: small and quick, accuracy well above chance (10 classes) after 2 epochs
TRAIN_ARGS = ['train', '--data', 'synthetic', '--ir', '10', '--epochs', '2', '--bs', '32', '--steps', '2', '--select-steps', '0',
              '--attacks', 'clean', '--lr', '0.05', '--quiet']

def _rank_methods(rank, out):
    "One of 2 processes (started by `torch.multiprocessing.spawn`): every method over a gloo group of 2"
    torch.set_num_threads(1)
    # a file store: no TCP port to pick, so no port another program could take in between
    dist.init_process_group('gloo', init_method=f'file://{out}/store2', rank=rank, world_size=2)
    try:
        res = {m: _train(m, f'{out}/teacher{rank}') for m in METHODS}
        res['finetune'] = {k: _finetune(k) for k in FT_KINDS}
    finally: dist.destroy_process_group()
    torch.save(res, f'{out}/rank{rank}.pt')

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    mp.spawn(_rank_methods, args=(str(out),), nprocs=2, join=True)
    # the reference: one process, the same global batch and the same sampler order (a group of one)
    dist.init_process_group('gloo', init_method=f'file://{out}/store1', rank=0, world_size=1)
    try:
        single = {m: _train(m, str(out / 'teacher_single')) for m in METHODS}
        single['finetune'] = {k: _finetune(k) for k in FT_KINDS}
    finally: dist.destroy_process_group()
    # `ltat train` as users run it: the command under `torchrun --standalone` (torchrun picks its own free port)
    torchrun, ltat_bin = (str(Path(sys.executable).with_name(n)) for n in ('torchrun', 'ltat'))
    with open(out / 'torchrun.log', 'w') as log:
        r = subprocess.run([torchrun, '--standalone', '--nproc_per_node', '2', ltat_bin, *TRAIN_ARGS, '--out', str(out / 'two')],
                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                           env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600)
    stdout = (out / 'torchrun.log').read_text()
    assert r.returncode == 0, stdout[-6000:]
    from ltat.cli import main
    assert main([*TRAIN_ARGS, '--out', str(out / 'one')]) == 0               # `ltat train` in one process
    return single, [torch.load(f'{out}/rank{r}.pt') for r in range(2)], out, stdout

def _epoch_done(p):
    try: return torch.load(p, weights_only=True)['epoch']
    except Exception: return None     # not written yet (the write is atomic: never a torn file)

@pytest.fixture(scope='module')
def resumed(runs):
    "The torchrun run of `runs` again, every process killed with SIGKILL after its first checkpoint, then resumed under torchrun"
    *_, out, _ = runs
    torchrun, ltat_bin = (str(Path(sys.executable).with_name(n)) for n in ('torchrun', 'ltat'))
    cmd, env, d = [torchrun, '--standalone', '--nproc_per_node', '2', ltat_bin, *TRAIN_ARGS], {**os.environ, 'OMP_NUM_THREADS': '1'}, out / 'killed'
    p = subprocess.Popen([*cmd, '--out', str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         env=env, start_new_session=True)            # its own process group: the kill reaches every worker
    t0, killed_at = time.time(), None
    while time.time() - t0 < 300 and p.poll() is None:
        e = _epoch_done(d / 'last.pth')
        if e is not None and e >= 1: os.killpg(p.pid, signal.SIGKILL); killed_at = e; break
        time.sleep(0.02)
    p.wait(timeout=60)
    assert killed_at == 1 and _epoch_done(d / 'last.pth') == 1, (killed_at, p.returncode)
    r = subprocess.run([*cmd, '--out', str(d), '--resume'], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    return out / 'two', d, r.stdout + r.stderr

def _pick(runs, m): single, (r0, r1), *_ = runs; return single[m], (r0[m], r1[m])

@pytest.mark.parametrize('method', METHODS)
def test_weights_equal_single_process(runs, method):
    single, (r0, r1) = _pick(runs, method)
    assert torch.equal(r0['weights'], r1['weights'])                          # the processes stay in sync
    d = (r0['weights'] - single['weights']).abs().max().item()
    print(f"{method}: max |w_2proc - w_1proc| = {d:.2e}")
    assert d < 1e-5, d                                                        # eq. (2): the whole batch's gradient
    assert not (r0['weights'] == 0).all()
    assert not single['had_cb'] and not r0['had_cb'] and r0['is_module']      # the context removes its callback and wrapper

@pytest.mark.parametrize('method', METHODS)
def test_metrics_equal_single_process(runs, method):
    single, (r0, r1) = _pick(runs, method)
    for r in (r0, r1):
        for vs, vd in zip(single['values'], r['values']):
            # valid loss, accuracy, rob_acc; train loss (index 0) is fastai's smoothed loss, all-gathered per batch
            for a, b in zip(vs[1:], vd[1:]): assert abs(a - b) < 1e-5, (single['values'], r['values'])

@pytest.mark.parametrize('kind', FT_KINDS)
def test_finetune_equal_single_process(runs, kind):
    "RoBal's fine-tuning under torchrun: a frozen body ('rs', 'lws') and the class-aware order (sharded per batch) included"
    single, (r0, r1), *_ = runs
    a, b, c = single['finetune'][kind], r0['finetune'][kind], r1['finetune'][kind]
    assert torch.equal(b, c)
    d = (a - b).abs().max().item()
    print(f"finetune {kind}: max |w_2proc - w_1proc| = {d:.2e}")
    assert d < 1e-5, d

def test_counts_equal_single_process(runs):
    single, (r0, r1) = _pick(runs, 'pgd_at')
    assert single['counts'].sum(1).tolist() == [single['n_train']] * EPOCHS   # every training image counted once
    assert torch.equal(r0['counts'], r1['counts']) and torch.equal(r0['counts'], single['counts'])

def test_reat_counts_equal_single_process(runs):
    "REAT's adversarial-prediction counts (summed at epoch end) equal a single process's"
    single, (r0, r1) = _pick(runs, 'reat')
    assert single['ae_counts'].sum().item() == single['n_train']
    assert torch.equal(r0['ae_counts'], r1['ae_counts']) and torch.equal(r0['ae_counts'], single['ae_counts'])

def test_ltat_train_under_torchrun(runs):
    "`ltat train` under torchrun: one set of outputs (rank 0), one evaluation, accuracy in line with one process"
    *_, out, stdout = runs
    two, one = sorted(p.name for p in (out / 'two').iterdir()), sorted(p.name for p in (out / 'one').iterdir())
    assert two == one and 'last.pth' in two, (two, one)                      # no temporary file of a second writer either
    assert stdout.count('[last checkpoint]') == 1, stdout[-3000:]             # rank 0 alone evaluates and prints
    hist = (out / 'two' / 'history.csv').read_text().splitlines()
    assert len(hist) == 1 + 2 and hist[0].startswith('epoch,'), hist          # one header, one line per epoch: one writer
    acc = {k: json.loads((out / k / 'card_last.json').read_text()) for k in ('one', 'two')}
    a = {k: _clean(v) for k, v in acc.items()}
    print('clean accuracy, 1 vs 2 processes:', a)
    assert min(a.values()) > 0.5 and abs(a['one'] - a['two']) < 0.15, a     # 10 classes: chance is 0.1

def test_resume_under_torchrun(resumed):
    "Killed after epoch 1 and resumed, both under torchrun: the weights of the uninterrupted 2-process run, one history"
    ref, run, log = resumed
    a, b = (torch.load(d / 'last.pth', weights_only=True) for d in (ref, run))
    assert a['epoch'] == b['epoch'] == 2 and a['model'].keys() == b['model'].keys()
    d = max((a['model'][k].float() - b['model'][k].float()).abs().max().item() for k in a['model'])
    print(f"resumed under torchrun: max |w_resumed - w_uninterrupted| = {d:.2e}")
    assert d < 1e-6, d
    hist = (run / 'history.csv').read_text().splitlines()
    assert hist[0].startswith('epoch,') and len(hist) == 3 and sum(l.startswith('epoch') for l in hist) == 1, hist
    assert log.count('[last checkpoint]') == 1, log[-3000:]                 # rank 0 alone evaluates

def _clean(card):
    "Overall clean accuracy of a result card"
    return float(card['summary']['clean']['overall'])

