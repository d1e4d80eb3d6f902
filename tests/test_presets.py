"""Every preset against its official code: the learning rate of every epoch, checkpoint selection, seeds, budgets, RoBal configs.

The official rules below are re-stated from the official training loops (epochs counted as each loop counts them),
independently of ltat's schedule code; ltat's side is what its schedule callbacks set in a real fastai `Learner`."""
import functools, inspect, math, pathlib, pytest, torch, torch.nn as nn
from fastai.callback.core import Callback, CancelValidException
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import SGD
from ltat.data import TensorDS, TensorDL
from ltat.presets import PRESETS, preset, schedule_cbs

torch.set_num_threads(1)

# ---- the official rules ------------------------------------------------------------------------------------------

def at_bsl_rule(lr, epoch):
    "NISPLab/AT-BSL @ 23f433e, train_at_bsl_cifar10.py / _cifar100.py `adjust_learning_rate`; epochs 1..100 (also TRADES' script)"
    out = lr
    if epoch >= 75: out = lr * 0.1
    if epoch >= 90: out = lr * 0.01
    if epoch >= 100: out = lr * 0.001
    return out

def mart_rule(lr, epoch):
    "YisenWang/MART @ 2d83e17, train_resnet.py `adjust_learning_rate`; epochs 1..120"
    if epoch >= 100: return lr * 0.001
    elif epoch >= 90: return lr * 0.01
    elif epoch >= 75: return lr * 0.1
    return lr

def trades_awp_rule(lr, epoch):
    "csdongxian/AWP @ a7acf5d, trades_AWP/train_trades_cifar.py `adjust_learning_rate`; epochs 1..200"
    out = lr
    if epoch >= 100: out = lr * 0.1
    if epoch >= 150: out = lr * 0.01
    return out

def srat_rule(lr, epoch0):
    "SRAT: 'decay at epoch 160 and 180 with the ratio 0.01', read as kaidic/LDAM-DRW cifar_train.py does (0-based epoch + 1; > 160, > 180), no warm-up"
    epoch = epoch0 + 1
    if epoch > 180: return lr * 0.0001
    elif epoch > 160: return lr * 0.01
    return lr

def reat_lrs(lr, n_epoch):
    "GuanlinLee/REAT @ a7909fd, train.py: PyTorch's `MultiStepLR([60, 75], 0.1)`, `scheduler.step()` after every epoch"
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched, out = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 75], gamma=0.1), []
    for _ in range(n_epoch):
        out.append(opt.param_groups[0]['lr']); opt.step(); sched.step()
    return out

def multistep_lrs(lr, n_epoch, milestones):
    "zhang-lilin/RobustLT @ 2d63979 train.py and BuhuiOK/TAET code/TAET_demo.ipynb: `MultiStepLR(milestones)`, stepped after every epoch"
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched, out = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1), []
    for _ in range(n_epoch):
        out.append(opt.param_groups[0]['lr']); opt.step(); sched.step()
    return out

def robal_lrs(lr, n_epoch, lr_decline=(60, 75), warmup_epochs=0):
    "wutong16/Adversarial_Long-Tail @ ab2f3a7, train.py `adjust_learning_rate`: the CURRENT rate times the decay, every epoch 1..n"
    cur, out = lr, []
    for epoch in range(1, n_epoch + 1):
        decay = 1.
        for d in lr_decline:
            if epoch >= d: decay *= 0.1
        if epoch < warmup_epochs: decay = (epoch + 1) / warmup_epochs
        cur = cur * decay
        out.append(cur)
    return out

def at_awp_lrs(lr, n_epoch, iters=109):
    "csdongxian/AWP @ a7acf5d, AT_AWP/train_cifar10.py 'piecewise' at t = epoch + (i+1)/len (epochs from 0): the first iteration of each epoch"
    def lr_schedule(t):
        if t / n_epoch < 0.5: return lr
        elif t / n_epoch < 0.75: return lr / 10.
        return lr / 100.
    return [lr_schedule(epoch + 1 / iters) for epoch in range(n_epoch)]

_ATBSL = [at_bsl_rule(0.1, e) for e in range(1, 101)]      # AT-BSL, and the protocol ltat assumes for the Self-Distill rows
OFFICIAL_LRS = {
    'at_bsl-cifar10-lt': _ATBSL, 'at_bsl-cifar100-lt': _ATBSL,
    'self_distill-cifar10-lt': _ATBSL, 'self_distill-cifar100-lt': _ATBSL,
    'pgd_at-cifar10-lt': _ATBSL, 'trades-cifar10-lt': _ATBSL, 'mart-cifar10-lt': _ATBSL, 'awp-cifar10-lt': _ATBSL,
    'reat-cifar10-lt': reat_lrs(0.1, 80), 'reat-cifar100-lt': reat_lrs(0.1, 80),
    **{f'robal-{v}-{d}-lt': robal_lrs(0.1, 80) for v in 'nr' for d in ('cifar10', 'cifar100')},
    **{n: [srat_rule(0.1, e) for e in range(200)] for n in ('srat-ldam-exp100', 'srat-ce-exp100', 'srat-ldam-step100')},
    'trades-official-cifar10-lt': [at_bsl_rule(0.1, e) for e in range(1, 77)],     # train_trades_cifar10.py: same rule, 76 epochs
    'mart-official-cifar10-lt': [mart_rule(0.01, e) for e in range(1, 121)],
    'awp-official-cifar10-lt': at_awp_lrs(0.1, 200),
    'trades_awp-official-cifar10-lt': [trades_awp_rule(0.1, e) for e in range(1, 201)],
    **{n: multistep_lrs(0.1, 100, (75, 90)) for n in ('pgd_at-rlt-cifar10-lt', 'robustlt-pgd_at-cifar10-lt', 'at_bsl-rlt-cifar10-lt',
                                                     'robustlt-at_bsl-cifar10-lt', 'taet-rlt-cifar10-lt', 'robustlt-taet-cifar10-lt',
                                                     'taet-cifar10-lt')},
    # RobustLT's configs/cifar10lf: MultiStepLR([100, 150]) over 200 epochs (AWP), MultiStepLR([60, 75]) over 80 (REAT, RoBal)
    **{f'{r}awp-{"" if r else "rlt-"}cifar10-lt': multistep_lrs(0.1, 200, (100, 150)) for r in ('', 'robustlt-')},
    **{f'{r}{m}-{"" if r else "rlt-"}cifar10-lt': multistep_lrs(0.1, 80, (60, 75)) for m in ('reat', 'robal') for r in ('', 'robustlt-')},
}
OWN_PRESETS = {'fmnist-lt'}      # ltat's own one-cycle CPU benchmark: no official schedule

# ---- what ltat's callbacks set -----------------------------------------------------------------------------------

class RecordLR(Callback):
    "The rate of the first training batch of every epoch, and whether it stays constant within the epoch (no validation)"
    order = 99
    def before_fit(self): self.lrs, self.const = [], True
    def before_validate(self): raise CancelValidException()
    def before_epoch(self): self.first = True
    def before_batch(self):
        if not self.training: return
        lr = self.opt.hypers[0]['lr']
        if self.first: self.lrs.append(lr); self.first = False
        else: self.const &= math.isclose(lr, self.lrs[-1], rel_tol=1e-12)

@functools.lru_cache(maxsize=None)
def _callback_lrs(schedule_repr, lr, n_epoch):
    schedule = eval(schedule_repr)
    rec = RecordLR()
    x, y = torch.randint(0, 256, (8, 1, 2, 2), dtype=torch.uint8), torch.randint(0, 2, (8,))
    dls = DataLoaders(TensorDL(TensorDS(x, y), bs=4), TensorDL(TensorDS(x, y), bs=8), device='cpu')   # two batches per epoch
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), loss_func=nn.CrossEntropyLoss(), opt_func=SGD, cbs=rec)
    with learn.no_bar(), learn.no_logging(): learn.fit(n_epoch, lr, cbs=schedule_cbs(schedule, lr, n_epoch))
    assert rec.const, "the rate changed within an epoch"
    return tuple(rec.lrs)

def callback_lrs(r): return list(_callback_lrs(repr(r['schedule']), r['lr'], r['epochs']))

def test_every_preset_has_an_official_schedule():
    assert set(OFFICIAL_LRS) == set(PRESETS) - OWN_PRESETS

@pytest.mark.parametrize('name', sorted(OFFICIAL_LRS))
def test_lr_of_every_epoch_is_official(name):
    "The rate ltat's schedule callbacks set in each epoch equals the official loop's (fails for AT-BSL with 0-based milestones)"
    r, official = PRESETS[name], OFFICIAL_LRS[name]
    assert r['epochs'] == len(official)
    got = callback_lrs(r)
    bad = [(e, g, o) for e, (g, o) in enumerate(zip(got, official), 1) if not math.isclose(g, o, rel_tol=1e-9)]
    assert not bad, f"{name}: (epoch from 1, ltat, official) {bad[:5]}"

def test_at_bsl_epochs_at_each_rate():
    "The issue's numbers: AT-BSL runs 74 epochs at 0.1, the 75th is the first at 0.01, the 100th at 0.0001"
    got = callback_lrs(PRESETS['at_bsl-cifar10-lt'])
    assert sum(math.isclose(v, 0.1) for v in got) == 74
    assert math.isclose(got[74], 0.01) and math.isclose(got[99], 1e-4)

def test_robal_lr_schedule_against_official_rule():
    "ltat.robal.robal_lr_schedule (12_robal) vs train.py's rule: RoBal configs (lr_decline [60, 75]) and the focal config (warmup_epochs 5)"
    from ltat.robal import robal_lr_schedule
    for warmup in (0, 5):
        f = robal_lr_schedule(0.1, 80, (60, 75), warmup)
        got = [f(e / 80) for e in range(80)]
        for g, o in zip(got, robal_lrs(0.1, 80, (60, 75), warmup)): assert math.isclose(g, o, rel_tol=1e-9)
    assert math.isclose(robal_lrs(0.1, 80, warmup_epochs=5)[10], 0.0192)

def test_one_cycle_has_no_epoch_callbacks():
    assert schedule_cbs(PRESETS['fmnist-lt']['schedule'], 0.05, 5) == []

# ---- checkpoint selection, seeds, budgets, precision, sources --------------------------------------------------------

SELECT = {'at_bsl-cifar10-lt': dict(steps=20, first_epoch=75), 'at_bsl-cifar100-lt': dict(steps=20, first_epoch=75),
          'reat-cifar10-lt': dict(steps=20, first_epoch=1), 'reat-cifar100-lt': dict(steps=20, first_epoch=1),
          **{f'robal-{v}-{d}-lt': 'last' for v in 'nr' for d in ('cifar10', 'cifar100')},
          'awp-official-cifar10-lt': dict(steps=20, first_epoch=1), 'fmnist-lt': dict(steps=10, first_epoch=1)}

@pytest.mark.parametrize('name', sorted(SELECT))
def test_selection_as_official(name):
    "AT-BSL: best PGD-20 among epochs >= 75; REAT and AT-AWP: best PGD-20 every epoch; RoBal: the last epoch"
    assert PRESETS[name]['select'] == SELECT[name]

@pytest.mark.parametrize('name', sorted(PRESETS))
def test_new_keys(name):
    r = PRESETS[name]
    assert r['subset_seed'] == 0                     # the official codes draw the subset with seed 0 whatever the run seed
    assert r['eval_eps'] == 8/255                    # one budget for every row of a table
    assert r['fast'] is False                        # float32, as every official code
    assert r['select'] == 'last' or (set(r['select']) == {'steps', 'first_epoch'} and all(isinstance(v, int) and v >= 1 for v in r['select'].values()))
    assert isinstance(r['source'], dict) and {'paper', 'table', 'code'} <= set(r['source'])
    assert preset(name, subset_seed=1, eval_eps=0.031, fast=True, select='last', seed=5)['seed'] == 5

def test_seeds_as_official():
    assert [PRESETS[n]['seed'] for n in ('at_bsl-cifar10-lt', 'robal-n-cifar10-lt', 'reat-cifar10-lt')] == [1, 1, 0]

def test_trades_mart_train_at_0031_evaluate_at_8_255():
    for n in ('trades-cifar10-lt', 'mart-cifar10-lt'):
        assert PRESETS[n]['eps'] == 0.031 and PRESETS[n]['eval_eps'] == 8/255

def test_baseline_official_recipes():
    m, t, a, ta = (PRESETS[n] for n in ('mart-official-cifar10-lt', 'trades-official-cifar10-lt', 'awp-official-cifar10-lt',
                                         'trades_awp-official-cifar10-lt'))
    assert (m['method_kw']['beta'], m['lr'], m['wd'], m['epochs'], m['arch']) == (5.0, 0.01, 3.5e-3, 120, 'resnet18')
    assert (t['wd'], t['epochs'], t['method_kw']['beta'], t['eps'], t['alpha']) == (2e-4, 76, 6.0, 0.031, 0.007)
    assert (a['epochs'], a['arch'], a['method']) == (200, 'preact_resnet18', 'awp')
    assert (ta['epochs'], ta['method_kw']['variant']) == (200, 'trades')

def test_common_protocol_rows_say_so():
    "The Self-Distill baselines: the paper does not state their settings; the preset says so and names the table"
    for n in ('pgd_at-cifar10-lt', 'trades-cifar10-lt', 'mart-cifar10-lt', 'awp-cifar10-lt'):
        s = PRESETS[n]['source']
        assert s['table'] == 'Table 1' and 'Self-Distillation' in s['paper']
        assert '[UNCONFIRMED]' in s['note'] and "AT-BSL" in s['note']

def test_no_outside_documents_cited():
    import sys; sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'tools'))
    from check_docs import outside_citations
    assert outside_citations(repr(PRESETS)) == []

def test_presets_imports_at_module_level():
    "presets sits above the method modules: no import inside `schedule_cbs`"
    assert 'import' not in inspect.getsource(schedule_cbs)

# ---- RoBal presets against the official configs -------------------------------------------------------------------

ROBAL_CONFIGS = {   # wutong16/Adversarial_Long-Tail @ ab2f3a7, configs/*_robal_{N,R}_{train,eval}.yaml
    'robal-n-cifar10-lt': dict(m=0.1, s=10, tau_b=1.2, tau_m=0, beta_reg=6, gamma=0.03125, eval=dict(scale=10, tau_p=0.1), data=('cifar10', 50)),
    'robal-r-cifar10-lt': dict(m=0.1, s=10, tau_b=1.5, tau_m=0.3, beta_reg=6, gamma=0.03125, eval=None, data=('cifar10', 50)),
    'robal-n-cifar100-lt': dict(m=0.2, s=10, tau_b=0, tau_m=0, beta_reg=3, gamma=0.03125, eval=dict(scale=10, tau_p=1.5), data=('cifar100', 10)),
    'robal-r-cifar100-lt': dict(m=0.3, s=10, tau_b=0, tau_m=0, beta_reg=6, gamma=0.0625, eval=dict(scale=10, tau_p=1.7), data=('cifar100', 10)),
}

@pytest.mark.parametrize('name', sorted(ROBAL_CONFIGS))
def test_robal_preset_as_official_config(name):
    from ltat.robal import RoBalTrain, robal_preset
    c, r = ROBAL_CONFIGS[name], PRESETS[name]
    cb = RoBalTrain(**r['method_kw'])
    assert (cb.m0, cb.s, cb.tau_b, cb.tau_m, cb.beta_reg) == (c['m'], c['s'], c['tau_b'], c['tau_m'], c['beta_reg'])
    assert (r['dataset'], r['ir']) == c['data'] and r['arch_kw']['gamma'] == c['gamma'] and r['arch_kw']['scale'] == 1
    assert robal_preset(r['robal_eval'])['eval'] == c['eval']
    assert (r['arch'], r['head'], r['bs'], r['epochs'], r['lr'], r['wd'], r['eps'], r['alpha'], r['steps'], r['seed']) == \
           ('wrn34_10', 'cosine', 64, 80, 0.1, 2e-4, 0.031, 0.0078, 5, 1)

# ---- the protocol records ----------------------------------------------------------------------------------------

def test_protocol_every_setting_equal_or_named():
    from ltat.presets import protocol_check
    assert protocol_check() == []

def test_protocol_check_can_fail():
    from ltat.presets import protocol_check
    old = PRESETS['reat-cifar10-lt']['select']
    PRESETS['reat-cifar10-lt']['select'] = dict(steps=10, first_epoch=1)
    try: problems = protocol_check()
    finally: PRESETS['reat-cifar10-lt']['select'] = old
    assert [(n, k) for n, k, _ in problems] == [('reat-cifar10-lt', 'select')]

def test_awp_preset_crafts_as_official():
    "AT-AWP's official script crafts with BatchNorm batch statistics: the awp presets' attack runs in train mode"
    from ltat.presets import protocol
    for n in ('awp-cifar10-lt', 'awp-official-cifar10-lt'): assert protocol(n)['attack_bn'].startswith('train')
    assert protocol('trades_awp-official-cifar10-lt')['attack_bn'] == 'eval'

# ---- every RobustLT row trains: its method options (post_step, ascent, count_mode, class_eps) work together ----------
RLT_ROWS = sorted(n for n in PRESETS if 'rlt-cifar10' in n or n.startswith('robustlt-'))

def test_robustlt_rows_cover_its_repository():
    "RobustLT's repository runs PGD-AT, AT-BSL, TAET, AWP, REAT and RoBal, each with and without its plug-in"
    methods = {PRESETS[n]['method'] for n in RLT_ROWS}
    assert methods == {'pgd_at', 'at_bsl', 'taet', 'awp', 'reat', 'robal'} and len(RLT_ROWS) == 12, RLT_ROWS
    for n in RLT_ROWS:
        on = PRESETS[n]['method_kw'].get('class_eps') == 'robustlt'
        assert on == n.startswith('robustlt-'), n
        assert PRESETS[n]['method_kw']['post_step'] in (('adv', 'nat'), ('nat', 'adv')), n

@pytest.mark.parametrize('name', RLT_ROWS)
def test_robustlt_row_trains(name):
    "Two epochs of the row's method with the row's options (head included) on a tiny synthetic set: finite losses"
    import math, warnings
    import ltat.all
    from ltat.data import lt_dls
    from ltat.models import create_model
    from ltat.learner import adv_learner
    r = preset(name)
    kw = {k: v for k, v in (r.get('arch_kw') or {}).items() if k not in ('mean', 'std')}
    if r['head'] != 'linear': kw['head'] = r['head']
    dls = lt_dls('synthetic', 10, bs=16, in_ch=1, img_size=12, n_per_class=16, n_test=2, augment=False, device='cpu')
    torch.manual_seed(0)
    model = create_model('small_cnn', 10, in_ch=1, width=4, hidden=8, **kw)
    mkw = {**r['method_kw'], **({'ce_epochs': 1} if r['method'] == 'taet' else {})}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        l = adv_learner(dls, model, method=r['method'], steps=1, robust_metric=False, **mkw)
        with l.no_bar(), l.no_logging(): l.fit(2, 0.05)
    assert all(math.isfinite(float(v)) for v in l.recorder.losses)
