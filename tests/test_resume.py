"Runs that survive faults: a run killed with SIGKILL and resumed (bar on or off, to a pipe or a terminal) ends with the same weights, bit for bit; NaN losses stop a run."
import os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch

torch.set_num_threads(1)
LTAT = [sys.executable, '-c', 'import sys; from ltat.cli import main; sys.exit(main())']
ARGS = ['train', '--data', 'synthetic', '--ir', '10', '--epochs', '4', '--bs', '32', '--steps', '2', '--lr', '0.05', '--width', '8',
        '--attacks', 'clean', '--aa-n', '0', '--seed', '1', '--rob-batches', '1']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}

def _epoch(p):
    try: return torch.load(p, weights_only=True)['epoch']
    except Exception: return None     # not written yet (the write itself is atomic: never a torn file)

def _same_final_state(ref, run):
    a, b = torch.load(ref / 'last.pth', weights_only=True), torch.load(run / 'last.pth', weights_only=True)
    assert a['epoch'] == b['epoch'] == 4
    assert a['model'].keys() == b['model'].keys()
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k
    for sa, sb in zip(a['opt']['state'], b['opt']['state']):
        for k in sa:
            if torch.is_tensor(sa[k]): assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(a['rng']['torch'], b['rng']['torch'])
    hist = (run / 'history.csv').read_text().splitlines()
    assert sum(l.startswith('epoch') for l in hist) == 1, hist      # the resumed run appends, without a second header

@pytest.fixture(scope='module')
def killed(tmp_path_factory):
    """An uninterrupted reference run, and the same run with its progress bar on (the default) killed with SIGKILL
    after its first checkpoint: `(ref, killed_dir)`"""
    d = tmp_path_factory.mktemp('resume')
    ref, run = d / 'ref', d / 'killed'
    r = subprocess.run(LTAT + ARGS + ['--quiet', '--out', str(ref)], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    p = subprocess.Popen(LTAT + ARGS + ['--out', str(run)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0, killed_at = time.time(), None
    while time.time() - t0 < 300:
        e = _epoch(run / 'last.pth')
        if e is not None and e >= 1:
            p.send_signal(signal.SIGKILL); killed_at = e; break
        if p.poll() is not None: break
        time.sleep(0.02)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    assert killed_at is not None and _epoch(run / 'last.pth') < 4, 'killed after the last epoch: nothing left to resume'
    return ref, run

def _copy(src, dst): shutil.copytree(src, dst); return dst

def test_sigkill_then_resume_is_bitwise_identical(killed, tmp_path):
    ref, run = killed[0], _copy(killed[1], tmp_path / 'run')
    r = subprocess.run(LTAT + ARGS + ['--quiet', '--out', str(run), '--resume'], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    _same_final_state(ref, run)

def test_resume_with_progress_bar_redirected(killed, tmp_path):
    "The default `ltat train` (bar on), output to a pipe: the bar used to fail in `before_epoch` (no `start_t`)"
    ref, run = killed[0], _copy(killed[1], tmp_path / 'run')
    r = subprocess.run(LTAT + ARGS + ['--out', str(run), '--resume'], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'start_t' not in r.stderr
    _same_final_state(ref, run)

def test_resume_with_progress_bar_in_a_terminal(killed, tmp_path):
    "The same in a terminal (a pseudo-terminal), where fastprogress draws the bars"
    import pty, threading
    ref, run = killed[0], _copy(killed[1], tmp_path / 'run')
    master, slave = pty.openpty()
    p = subprocess.Popen(LTAT + ARGS + ['--out', str(run), '--resume'], env=ENV, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    def drain():                       # keep reading, or the child blocks on a full terminal buffer
        while True:
            try: b = os.read(master, 4096)
            except OSError: break
            if not b: break
            chunks.append(b)
    t = threading.Thread(target=drain, daemon=True); t.start()
    rc = p.wait(timeout=600); t.join(timeout=10); os.close(master)
    out = b''.join(chunks).decode(errors='replace')
    assert rc == 0, out[-2000:]
    assert 'Epoch 4/4' in out, out[-2000:]          # the bar was drawn, up to the last epoch
    _same_final_state(ref, run)

def test_resume_refuses_other_schedule_and_missing_checkpoint(tmp_path):
    from ltat.experiment import run_experiment
    with pytest.raises(FileNotFoundError, match='last.pth'):
        run_experiment('synthetic', 10, out=tmp_path / 'none', resume=True, progress=False)

def _learner(d):
    from fastai.torch_core import set_seed
    from ltat.data import lt_dls
    from ltat.models import create_model
    from ltat.learner import adv_learner
    from ltat.checkpoint import CheckpointCallback, FiniteLossCallback
    set_seed(0, reproducible=True)
    dls = lt_dls('synthetic', 10, bs=32, in_ch=1, img_size=12, n_per_class=40, n_test=8, device='cpu')
    m = create_model('small_cnn', dls.n_classes, in_ch=1, width=8)
    return adv_learner(dls, m, steps=1, rob_batches=1, path=d, model_dir='.', cbs=[CheckpointCallback('last.pth'), FiniteLossCallback()])

def test_nan_loss_stops_with_epoch_and_batch_and_keeps_last_good(tmp_path):
    from ltat.checkpoint import NonFiniteLossError, resume
    learn = _learner(tmp_path)
    n_iter, inner = len(learn.dls.train), learn.model
    calls = {'n': 0}
    def hook(mod, inp, out):
        if mod.training:
            calls['n'] += 1
            if calls['n'] == n_iter + 2: return out * float('inf')
    inner.register_forward_hook(hook)
    with learn.no_bar(), learn.no_logging(), pytest.raises(NonFiniteLossError, match='epoch 1, batch 1'):
        learn.fit_one_cycle(3, 0.05)
    ck = torch.load(tmp_path / 'last.pth', weights_only=True)
    assert ck['epoch'] == 1
    assert all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())
    with pytest.raises(ValueError, match='n_epoch=7'):
        resume(_learner(tmp_path), tmp_path / 'last.pth', 0.05, n_epoch=7)
