"The `ltat` command: train writes checkpoints and result cards; bad input exits 2 with a message."
import json, subprocess, sys, os
from pathlib import Path
import pytest

LTAT = [sys.executable, '-c', 'import sys; from ltat.cli import main; sys.exit(main())']

def run(*args, **kw):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(LTAT + list(args), capture_output=True, text=True, env=env, timeout=600, **kw)

def test_help_lists_commands():
    r = run('--help'); assert r.returncode == 0 and all(c in r.stdout for c in ('train', 'eval', 'demo'))
    r = run('train', '--help'); assert r.returncode == 0 and '--ir' in r.stdout and '--method' in r.stdout

def test_console_script_installed():
    exe = Path(sys.executable).parent / 'ltat'
    assert exe.exists(), 'the `ltat` console script is not installed (pyproject [project.scripts])'
    r = subprocess.run([str(exe), '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and 'train' in r.stdout

@pytest.mark.parametrize('args,msg', [(('train', '--data', 'imagenet'), "'imagenet'"), (('train', '--ir', '0.5'), 'ir=0.5'),
                                      (('train', '--method', 'madry'), "'madry'"), (('train', '--eps', '2'), 'eps=2.0'),
                                      (('train', '--profile', 'linear'), "'linear'"), (('fly',), "'fly'"),
                                      (('eval', '/nonexistent/best.pth'), '/nonexistent/best.pth'),
                                      (('train', '--data', 'cifar10', '--path', '/nonexistent', '--download', 'False'), '/nonexistent')])
def test_bad_input_exit_2(args, msg):
    r = run(*args, '--quiet') if args[0] in ('train', 'eval') else run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert msg in r.stderr, r.stderr

def test_train_writes_cards_and_checkpoints(tmp_path):
    out = tmp_path / 'run'
    # 'mart' is registered by its chapter (ltat.baselines), not by ltat.learner: a fresh process must find it
    r = run('train', '--data', 'synthetic', '--ir', '10', '--method', 'mart', '--epochs', '1', '--bs', '64', '--steps', '2',
            '--lr', '0.05', '--attacks', 'clean,pgd5', '--aa-n', '0', '--seed', '3', '--out', str(out), '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ('last.pth', 'best.pth', 'history.csv', 'card_last.json', 'card_best.json', 'per_class_last.png'): assert (out / f).exists(), f
    card = json.loads((out / 'card_last.json').read_text())
    assert card['protocol']['eps'] == '8/255' and card['method'] == 'mart' and card['seed'] == 3
    assert set(card['summary']) == {'clean', 'pgd5', 'worst'}
    s = card['summary']['pgd5']
    assert 0 <= s['overall'] <= 1 and set(s) >= {'head', 'body', 'tail', 'tail_class'}
    assert card['counts'][0] > card['counts'][-1]
    # ltat eval re-evaluates the checkpoint and agrees with the card on clean accuracy
    r = run('eval', str(out / 'last.pth'), '--data', 'synthetic', '--ir', '10', '--attacks', 'clean', '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    card2 = json.loads((out / 'card_last_eval.json').read_text())
    assert card2['summary']['clean']['overall'] == pytest.approx(card['summary']['clean']['overall'])

def test_resume_without_checkpoint_exit_2(tmp_path):
    r = run('train', '--data', 'synthetic', '--resume', '--out', str(tmp_path / 'none'), '--quiet')
    assert r.returncode == 2 and 'last.pth' in r.stderr, r.stderr

def test_last_checkpoint_is_complete(tmp_path):
    import torch
    out = tmp_path / 'run'
    r = run('train', '--data', 'synthetic', '--ir', '10', '--epochs', '1', '--bs', '64', '--steps', '1', '--width', '8',
            '--attacks', 'clean', '--aa-n', '0', '--rob-batches', '1', '--out', str(out), '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    ck = torch.load(out / 'last.pth', weights_only=True)
    assert ck['epoch'] == ck['n_epoch'] == 1 and {'model', 'opt', 'rng', 'callbacks', 'trackers'} <= set(ck)
    assert not list(out.glob('.last.pth.*.tmp'))          # no temporary file left behind
