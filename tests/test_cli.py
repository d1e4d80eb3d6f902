"The `ltat` command: train writes checkpoints and result cards; bad input exits 2 with a message."
import json, subprocess, sys, os
from pathlib import Path
import pytest

LTAT = [sys.executable, '-c', 'import sys; from ltat.cli import main; sys.exit(main())']

def run(*args, **kw):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(LTAT + list(args), capture_output=True, text=True, env=env, timeout=600, **kw)

def in_process(args, capsys):
    "`ltat ARGS` in this process: (exit code, stdout, stderr); the console script's own exit status is tested below"
    from ltat.cli import main
    try: rc = main(list(args))
    except SystemExit as e: rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err

def test_help_lists_commands(capsys):
    rc, out, _ = in_process(['--help'], capsys); assert rc == 0 and all(c in out for c in ('train', 'eval', 'demo'))
    rc, out, _ = in_process(['train', '--help'], capsys); assert rc == 0 and '--ir' in out and '--method' in out

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
def test_bad_input_exit_2(args, msg, capsys):
    rc, out, err = in_process([*args, '--quiet'] if args[0] in ('train', 'eval') else args, capsys)
    assert rc == 2, (out, err)
    assert msg in err, err

def test_bad_input_exit_status_of_the_process():
    "The same through a real process: exit status 2 and the message on stderr"
    r = run('train', '--method', 'madry', '--quiet')
    assert r.returncode == 2 and "'madry'" in r.stderr, (r.stdout, r.stderr)

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

def _demo_report(acc, n=(300, 300, 300), note=None):
    "A made-up report in the demo's shape: attack i has accuracy acc[i] in every group, measured on n[i] images"
    import pandas as pd
    from ltat.evaluate import RobustReport
    atts, cols = ['clean', 'pgd20', 'aa_ce_t', 'worst'], ('overall', 'head', 'body', 'tail', 'tail_class')
    s = pd.DataFrame({k: list(acc) + [min(acc)] for k in cols}, index=atts)
    s['n_eval'], s['reliable'] = list(n) + [min(n)], True
    return RobustReport(s, pd.DataFrame({'n': [30] * 10}), [], {}, {'note': note} if note else {})

def test_demo_table_blocks_and_same_images():
    from ltat.cli import demo_table, SAME_CKPT
    reps = {('pgd_at', 'last'): _demo_report((.7, .6, .55)), ('pgd_at', 'best'): _demo_report((.7, .6, .55), note=SAME_CKPT),
            ('reat', 'last'): _demo_report((.8, .7, .65)), ('reat', 'best'): _demo_report((.75, .68, .66))}
    tab = demo_table(reps)
    ck = lambda m: list(tab.loc[m].index.get_level_values('ckpt').unique())
    assert ck('pgd_at') == ['last = selected'] and ck('reat') == ['last', 'selected']      # one block when best is last
    assert len(tab) == 9 and 'worst' not in tab.index.get_level_values('attack')
    assert tab.loc[('reat', 'selected', 'aa_ce_t'), 'tail'] == .66 and tab.loc[('reat', 'last', 'aa_ce_t'), 'tail'] == .65
    with pytest.raises(ValueError, match='different numbers of images'):                     # AA on 200 beside PGD-20 on 10,000
        demo_table({('pgd_at', 'last'): _demo_report((.7, .6, .55), n=(10_000, 10_000, 200))})

def test_demo_synthetic(tmp_path):
    "The demo end to end on the synthetic data: same images for every attack, the blocks the cards call for, RoBal's Eq. 11 model"
    import pandas as pd
    out = tmp_path / 'demo'
    r = run('demo', '--data', 'synthetic', '--epochs', '1', '--steps', '1', '--n-eval', '100', '--methods', 'pgd_at,robal',
            '--width', '8', '--rob-batches', '1', '--out', str(out), '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    md = (out / 'table.md').read_text()
    assert 'every attack on the same 100 test images: the first 100 of the test set' in md and 'synthetic-LT' in md and 'epochs 1-1' in md
    assert (out / 'per_class.png').stat().st_size > 0
    tab = pd.read_csv(out / 'table.csv', index_col=[0, 1, 2])
    assert set(tab['n']) == {100}
    for m in ('pgd_at', 'robal'):
        best = json.loads((out / m / 'card_best.json').read_text())
        blocks = list(tab.loc[m].index.get_level_values('ckpt').unique())
        assert blocks == (['last = selected'] if best.get('note') == 'the selected checkpoint is the last one' else ['last', 'selected'])
        assert set(tab.loc[m].index.get_level_values('attack')) == {'clean', 'pgd20', 'aa_ce_t'}
    assert json.loads((out / 'robal' / 'card_last.json').read_text())['model'] == 'RobalInference'
