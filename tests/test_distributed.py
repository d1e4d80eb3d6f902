"Two gloo processes on 127.0.0.1 train the same tiny adv_learner as one process: counts and metrics must match."
import os, socket, importlib.util
import pytest, torch, torch.nn as nn
import torch.distributed as dist, torch.multiprocessing as mp
from fastai.callback.core import Callback
from ltat.core import dist_sum
from ltat.data import lt_dls
import ltat.all   # registers every method of every chapter
from ltat.learner import adv_learner, AdvTrain, RobustAccuracy
from ltat.fast import distrib_fit_ctx, DistribTrain

torch.set_num_threads(1)
N_CLS, EPOCHS = 4, 2

class AdvPredCounts(Callback):
    "Toy method state (as REAT's): per-class counts of adversarial predictions, per shard, summed at epoch end"
    order, run_valid = AdvTrain.order + 1, False
    def __init__(self, n_classes): self.n_classes, self.history = n_classes, []
    def before_train(self): self.acc = torch.zeros(self.n_classes, dtype=torch.long)
    def after_pred(self): self.acc += torch.bincount(self.learn.pred.argmax(1), minlength=self.n_classes)
    def after_train(self): self.history.append(dist_sum(self.acc.clone()))
    def state_dict(self): return {'history': [h.clone() for h in self.history]}
    def load_state_dict(self, d): self.history = [h.clone() for h in d['history']]

HAS_REAT = importlib.util.find_spec('ltat.reat') is not None
METHODS = ('pgd_at', 'reat') if HAS_REAT else ('pgd_at',)

class Tiny(nn.Module):
    "No BatchNorm (its statistics are per process on CPU; SyncBatchNorm is GPU-only); a `.head` as REAT needs"
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Linear(8 * 16, N_CLS)
    def forward(self, x): return self.head(self.body(x))

def _train(method='pgd_at'):
    "The same tiny run in every process: deterministic PGD (init 'none') so shards and whole batches see the same attack"
    dls = lt_dls('synthetic', 2, bs=16, in_ch=1, img_size=8, n_classes=N_CLS, n_per_class=32, n_test=8, device='cpu')
    torch.manual_seed(0)
    counts = AdvPredCounts(N_CLS)
    # REAT: TAIL off, its per-batch feature statistics differ between a shard and the whole batch (like BatchNorm)
    mkw = dict(tail=False) if method == 'reat' else {}
    learn = adv_learner(dls, Tiny(), method=method, steps=2, init='none', robust_metric=False, fast=False, cbs=counts,
                        metrics=RobustAccuracy(steps=2, init='none'), **mkw)
    with learn.no_bar(), learn.no_logging(), distrib_fit_ctx(learn): learn.fit(EPOCHS, 0.05)
    reat = [c for c in learn.cbs if type(c).__name__ == 'REATTrain']
    return dict(values=[[float(v) for v in vs] for vs in learn.recorder.values], counts=torch.stack(counts.history),
                weights=torch.cat([p.detach().flatten() for p in learn.model.parameters()]),
                ae_counts=reat[0].ae_counts.detach().cpu().clone() if reat else None,
                n_train=len(dls.train) * dls.train.bs, had_cb=any(isinstance(c, DistribTrain) for c in learn.cbs))

def _worker(rank, world, port, out):
    # what torchrun sets: fastai reads WORLD_SIZE/RANK too, so this also exercises its gather path (ShardDL disables it)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method='env://', rank=rank, world_size=world)
    try: torch.save({m: _train(m) for m in METHODS}, f'{out}/rank{rank}.pt')
    finally: dist.destroy_process_group()

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return {m: _train(m) for m in METHODS}, [torch.load(f'{out}/rank{r}.pt') for r in range(2)]

def _pick(runs, m='pgd_at'): single, (r0, r1) = runs; return single[m], (r0[m], r1[m])

def test_counts_equal_single_process(runs):
    single, (r0, r1) = _pick(runs)
    assert single['counts'].sum(1).tolist() == [single['n_train']] * EPOCHS   # every training image counted once
    assert torch.equal(r0['counts'], r1['counts'])                          # summed: every process holds the total
    assert torch.equal(r0['counts'], single['counts'])

def test_metrics_equal_single_process(runs):
    single, (r0, r1) = _pick(runs)
    for r in (r0, r1):
        for vs, vd in zip(single['values'], r['values']):
            # valid loss, accuracy, rob_acc (train loss, index 0, is each process's own share)
            for a, b in zip(vs[1:], vd[1:]): assert abs(a - b) < 1e-5, (single['values'], r['values'])

def test_weights_equal_single_process(runs):
    single, (r0, r1) = _pick(runs)
    assert torch.equal(r0['weights'], r1['weights'])                      # processes stay in sync
    assert torch.allclose(r0['weights'], single['weights'], atol=1e-5)    # averaged gradients = whole-batch gradient
    assert not single['had_cb'] and not r0['had_cb']                        # the context removes its callback

@pytest.mark.skipif(not HAS_REAT, reason='ltat.reat not present')
def test_reat_counts_equal_single_process(runs):
    "REAT's adversarial-prediction counts (summed with dist_sum at epoch end) equal a single process's"
    single, (r0, r1) = _pick(runs, 'reat')
    assert single['ae_counts'].sum().item() == single['n_train']
    assert torch.equal(r0['ae_counts'], r1['ae_counts']) and torch.equal(r0['ae_counts'], single['ae_counts'])
    assert torch.allclose(r0['weights'], single['weights'], atol=1e-5)
