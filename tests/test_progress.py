"""Progress on stderr: every stage of an evaluation, a board of runs across worker processes; never a number."""
import io

import pytest
import timm
import torch

import timm_moe  # noqa: F401 - registers the models
from bench.core.parallel import run_parallel
from bench.core.progress import RunBoard, progress_bar, reporting_to, stage
from bench.evaluation.loop import evaluate_model
from bench.models import normalized

import parallel_jobs


def test_every_evaluation_stage_reports_and_no_number_changes(capsys, one_thread):
    torch.manual_seed(0)
    model = normalized(timm.create_model('resnet18_blockmoe_e2_k1', width=4, in_chans=1, num_classes=10),
                       (0.5,), (0.5,)).eval()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    quiet = evaluate_model(model, x, y, attacks='pgd10', batch_size=4, n_check=4, progress=False)
    assert capsys.readouterr().err == ''
    shown = evaluate_model(model, x, y, attacks='pgd10', batch_size=4, n_check=4, progress=True)
    err = capsys.readouterr().err  # not a terminal: plain lines, each stage's start and end
    for done in ('attack pgd10: 2/2', 'sanity checks: 12/12', 'routing: pgd10-last on the gated model: 2/2',
                 'per-expert subpaths: 2 experts x pgd10+pgd10-last: 8/8', 'routing under attack: 1/1',
                 'transfer matrix: 4/4'):
        assert done in err, err
    for key in ('clean_acc', 'robust_acc', 'correct', 'per_expert', 'routing_under_attack', 'transfer', 'sanity'):
        assert getattr(shown, key) == getattr(quiet, key)


def test_a_board_shows_each_runs_stage_and_the_overall_eta():
    out = io.StringIO()
    with RunBoard('grid', ['a', 'b'], procs=1, stream=out) as board:
        for run in ('a', 'b'):
            with reporting_to(board.handle, run), progress_bar(False) as bar:
                step = stage(bar, 'train', 3)
                for _ in range(3):
                    step()
    lines = out.getvalue().splitlines()
    assert lines[0] == 'grid: 2 runs, 1 at a time'
    assert 'grid: a: train (0/3)' in lines and any(l.startswith('grid: a: done (1/2 runs') and 'ETA' in l
                                                   for l in lines)
    assert any(l.startswith('grid: b: done (2/2 runs') for l in lines)


def test_run_parallel_returns_results_in_order_and_raises_a_jobs_error(tmp_path):
    jobs = [(f'j{i}', (str(tmp_path), f'j{i}', 0.0)) for i in range(3)]
    assert run_parallel(parallel_jobs.sleepy, jobs, 2, 'jobs', progress=False) == ['j0', 'j1', 'j2']
    with pytest.raises(RuntimeError, match='boom'):
        run_parallel(parallel_jobs.failing, [('a', ('boom',)), ('b', ('boom',))], 2, 'jobs', progress=False)


def test_each_sanity_check_shows_progress_within_its_stage(one_thread):
    """The sanity stage counted 9 checks, so a check that re-ran an attack at eps 0 was one silent step (9:22
    with AutoAttack): it now advances per batch of each extra attack and names the check and attack at work."""
    from bench.attacks import PGD, predict
    from bench.evaluation import checks as sanity
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x, y = torch.rand(6, 1, 4, 4), torch.arange(6) % 3
    adv = PGD(0.1, 'Linf', steps=10)(model, x, y)
    runs = {'pgd10': sanity.AttackRecord('pgd10', PGD(0.1, 'Linf', steps=10).settings(3), predict(model, adv) == y,
                                         adv)}
    steps = []
    sanity.run_checks(model, x, y, eps=0.1, norm='Linf', num_classes=3, runs=runs,
                      worst_case_correct=runs['pgd10'].correct, batch_size=2, n_check=6,
                      step=lambda n=1, **fields: steps.append((n, fields.get('ips'))))
    units = sanity.check_units(6, 0.1, 2, 6, runs)
    assert sum(n for n, _ in steps) == sum(units.values()) > len(sanity.CHECKS)
    assert [n for n, ips in steps if ips == 'eps_zero_is_clean: pgd10 at eps 0'] == [1, 1]  # 3 batches, the last ends it
    assert sum(n for n, ips in steps if ips.startswith('monotone_in_eps')) == 4 * 3
    assert max(n for n, _ in steps) <= 1  # no check jumps: each unit is one batch of one attack


def test_a_plain_log_hears_from_a_step_that_gives_no_update(monkeypatch):
    """In a log, a stage spoke only when it advanced: one AutoAttack batch left it silent for minutes (9:22 in the
    sanity checks). While a step runs, the task's line now comes every PLAIN_EVERY_S all the same."""
    import time
    from bench.core import progress
    monkeypatch.setattr(progress, 'PLAIN_EVERY_S', 0.2)
    out = io.StringIO()
    with progress_bar(True, out) as bar:
        step = stage(bar, 'sanity checks', 2)
        step(0, ips='eps_zero_is_clean: autoattack at eps 0')
        time.sleep(1.5)  # one long step, no update
        step(2)
    lines = out.getvalue().splitlines()
    waiting = [line for line in lines if 'sanity checks: 0/2 eps_zero_is_clean: autoattack at eps 0' in line]
    assert len(waiting) >= 3 and 'elapsed' in waiting[-1], lines
    assert lines[-1].startswith('sanity checks: 2/2'), lines
