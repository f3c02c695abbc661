"""`evaluate_model` and `timm-moe eval`: the result contract, MoE analyses, masking flags, resume, CLI errors."""
from __future__ import annotations

import json
import re

import pytest
import timm
import torch
from torch import nn

import timm_moe  # noqa: F401 - registers the models
from bench import cli
from bench.evaluation import moe as moe_analysis
from bench.attacks import PGD
from bench.data import dataset_info, eval_tensors
from bench.core.errors import UserError
from bench.evaluation.loop import evaluate_model
from masked_models import Quantised
from bench.evaluation.resume import SIDECAR_SUFFIX
from bench.models import normalized, unwrap

DATA = 'fashion-mnist-bundled'


pytestmark = pytest.mark.usefixtures('one_thread')


def _dense() -> nn.Module:
    info = dataset_info(DATA)
    torch.manual_seed(0)
    return normalized(timm.create_model('resnet18_dense', width=8, in_chans=1, num_classes=10),
                      info['mean'], info['std']).eval()


# ------------------------------------------------------------------------------------------- evaluate_model

def test_result_follows_the_contract_with_moe_analyses(tiny_trained):
    x, y = eval_tensors(DATA, 48)
    r = evaluate_model(tiny_trained, x, y, attacks='quick', batch_size=24, n_check=24)
    written = json.loads(json.dumps(r.to_json()))  # what `timm-moe eval --json` writes: plain JSON
    assert set(written) >= {'n_examples', 'eps', 'threat_model', 'clean_acc', 'robust_acc', 'correct', 'per_expert',
                            'routing_under_attack', 'transfer', 'sanity', 'flags', 'settings', 'timing'}
    assert written['robust_acc'] == r.robust_acc and written['correct'] == r.correct
    assert r.n_examples == 48 and r.threat_model == 'Linf' and r.eps == pytest.approx(8 / 255)
    assert list(r.robust_acc) == ['pgd10', 'apgd-ce10', 'worst_case']
    for k, v in r.correct.items():
        assert len(v) == 48 and set(v) <= {0, 1}, k
        assert r.counts[k] == sum(v)
    # the worst case per sample: robust in the worst case only if robust under every attack
    ens = r.correct['worst_case']
    assert ens == [int(a and b) for a, b in zip(r.correct['pgd10'], r.correct['apgd-ce10'])]
    assert r.robust_acc['worst_case'] <= min(r.robust_acc['pgd10'], r.robust_acc['apgd-ce10'])
    assert r.robust_acc['pgd10'] <= r.clean_acc
    # MoE: one row per expert, an E x E transfer matrix crafted by one final-iterate PGD on every point
    assert [row['expert'] for row in r.per_expert] == [0, 1, 2, 3]
    assert len(r.transfer) == 4 and all(len(row) == 4 for row in r.transfer)
    info = r.transfer_info
    assert info['attacked_points'] == [48] * 4 and info['attack'] == 'pgd10-last'
    ra = r.routing_under_attack
    assert ra['attacked_points'] == 48 and ra['crafted_with']['final_iterate'] is True
    assert ra['crafted_with']['steps'] == 10 and ra['attack'] == 'pgd10-last'
    assert 0.0 <= ra['changed_fraction'] <= 1.0 and (48 * ra['changed_fraction']) == pytest.approx(
        round(48 * ra['changed_fraction']))
    assert sum(ra['load_clean']) == pytest.approx(1.0) and sum(ra['load_adv']) == pytest.approx(1.0)
    # every check reports, none silently skipped; with no pyautoattack warning, flags are exactly the failed checks
    assert set(r.sanity) == {'deterministic', 'logits', 'nonzero_gradients', 'eps_zero_is_clean',
                                'monotone_in_eps', 'large_eps_to_chance', 'worst_case_reverified',
                                'apgd_not_weaker_than_pgd', 'square_not_stronger'}
    for c in r.sanity.values():
        assert c['passed'] in (True, False, None) and c['detail']
    assert r.attack_warnings == {} and r.autoattack_attacks_run == {}
    assert r.flags == [k for k, c in r.sanity.items() if c['passed'] is False]
    for check in ('worst_case_reverified', 'nonzero_gradients', 'eps_zero_is_clean', 'apgd_not_weaker_than_pgd'):
        assert r.sanity[check]['passed'] is True, (check, r.sanity[check])
    assert 'apgd-ce10 ' in r.sanity['eps_zero_is_clean']['detail']  # the evaluation's own attacks, at eps 0
    assert set(r.timing) >= {'pgd10', 'apgd-ce10', 'sanity', 'moe_analysis'}
    # exact settings per attack label, stored once
    s = r.settings['attacks']
    assert 'attack_settings' not in r.settings and list(s) == ['pgd10', 'apgd-ce10']
    assert s['pgd10']['steps'] == 10 and s['pgd10']['step_size'] == pytest.approx(2 / 255)
    assert s['pgd10']['random_start'] is False and s['pgd10']['restarts'] == 1 and s['pgd10']['seed'] == 0
    assert s['apgd-ce10']['random_start'] is True and 'adaptive' in s['apgd-ce10']['step_size']
    assert r.settings['model_config']['moe_config']['num_experts'] == 4


def test_gradient_masked_model_is_flagged(tiny_trained):
    x, y = eval_tensors(DATA, 32)
    r = evaluate_model(Quantised(tiny_trained).eval(), x, y, attacks='pgd10', per_expert=False, n_check=32,
                       batch_size=32)
    assert {'nonzero_gradients', 'large_eps_to_chance'} <= set(r.flags)
    assert r.sanity['apgd_not_weaker_than_pgd']['passed'] is None  # not applicable, and it says why
    assert 'needs both' in r.sanity['apgd_not_weaker_than_pgd']['detail']


def test_dense_model_gets_no_moe_results():
    x, y = eval_tensors(DATA, 8)
    r = evaluate_model(_dense(), x, y, attacks='pgd10', batch_size=8, n_check=8)
    assert r.per_expert is None and r.routing_under_attack is None and r.transfer is None


def test_resume_reuses_recorded_batches_and_refuses_a_different_evaluation(tmp_path):
    model = _dense()
    x, y = eval_tensors(DATA, 16)
    side = tmp_path / f'out.json{SIDECAR_SUFFIX}'
    first = evaluate_model(model, x, y, attacks='pgd10', batch_size=8, n_check=8, sidecar=side)
    header, *records = side.read_text().splitlines()
    assert [json.loads(r)['batch'] for r in records] == [0, 1]
    # pretend batch 0 was recorded with every image robust, and batch 1 never finished
    rec0 = json.loads(records[0])
    rec0['correct'] = [1] * 8
    side.write_text(header + '\n' + json.dumps(rec0) + '\n')
    again = evaluate_model(model, x, y, attacks='pgd10', batch_size=8, n_check=8, sidecar=side, resume=True)
    assert again.correct['pgd10'][:8] == again.correct['clean'][:8]  # taken from the record
    assert again.correct['pgd10'][8:] == first.correct['pgd10'][8:]  # recomputed
    assert [json.loads(r)['batch'] for r in side.read_text().splitlines()[1:]] == [0, 1]
    # a record whose stored examples are gone is not trusted: the batch runs again (and is re-verifiable)
    (tmp_path / f'out.json{SIDECAR_SUFFIX}.adv' / 'pgd10-0.pt').unlink()
    third = evaluate_model(model, x, y, attacks='pgd10', batch_size=8, n_check=8, sidecar=side, resume=True)
    assert third.correct['pgd10'] == first.correct['pgd10']
    assert third.sanity['worst_case_reverified']['passed'] is True
    with pytest.raises(UserError, match='different evaluation'):
        evaluate_model(model, x, y, attacks='pgd10', eps=4 / 255, batch_size=8, sidecar=side, resume=True)


def test_resume_takes_routing_under_attack_from_the_stored_examples(tmp_path, monkeypatch, tiny_trained):
    x, y = eval_tensors(DATA, 16)
    side = tmp_path / f'out.json{SIDECAR_SUFFIX}'
    adv_dir = tmp_path / f'out.json{SIDECAR_SUFFIX}.adv'
    kw = dict(attacks='pgd10', batch_size=8, n_check=8, sidecar=side)
    evaluate_model(tiny_trained, x, y, **kw)
    assert sorted(p.name for p in adv_dir.iterdir()) == ['pgd10-0.pt', 'pgd10-1.pt', 'routing-0.pt', 'routing-1.pt']
    # swap in recognisable "examples" (the clean images, half of them marked unattacked): a resumed run must
    # route exactly these, and count only the attacked ones
    attacked = torch.tensor([True, False] * 4)
    torch.save({'x_adv': x[:8].clone(), 'attacked': attacked}, adv_dir / 'routing-0.pt')
    torch.save({'x_adv': x[8:].clone(), 'attacked': attacked}, adv_dir / 'routing-1.pt')
    seen = []
    real = moe_analysis.routing_under_attack
    monkeypatch.setattr(moe_analysis, 'routing_under_attack',
                        lambda model, xc, x_adv, bs, attacked: seen.append(x_adv) or real(model, xc, x_adv, bs,
                                                                                           attacked=attacked))
    r = evaluate_model(tiny_trained, x, y, resume=True, **kw)
    assert torch.equal(seen[-1], x)
    assert r.routing_under_attack['attacked_points'] == 8 and r.routing_under_attack['changed_fraction'] == 0
    # an unreadable file is crafted again rather than trusted or fatal
    (adv_dir / 'routing-1.pt').write_bytes(b'torn')
    evaluate_model(tiny_trained, x, y, resume=True, **kw)
    assert not torch.equal(seen[-1], x)
    assert (seen[-1] - x).abs().max() <= 8 / 255 + 1e-6
    # a fresh (non-resumed) run forgets the old examples
    evaluate_model(tiny_trained, x, y, attacks='pgd10', batch_size=16, n_check=8, sidecar=side)
    assert sorted(p.name for p in adv_dir.iterdir()) == ['pgd10-0.pt', 'routing-0.pt']


# ------------------------------------------------------------------------------------------- CLI

def _argv(out, *extra):
    return ['eval', '--model', 'resnet18_blockmoe_e4_k1', '--model-kwargs', 'width=8', '--dataset', DATA,
            '--n-examples', '8', '--batch-size', '8', '--attacks', 'pgd10', '--n-check', '8', '--no-progress',
            '--json', str(out), *extra]


@pytest.fixture
def mismatched_checkpoint(tmp_path):
    path = tmp_path / 'dense.pth'
    torch.save(timm.create_model('resnet18_dense', width=8, in_chans=1, num_classes=10).state_dict(), path)
    return path


@pytest.mark.parametrize('extra, message', [
    (['--eps', '-0.1'], "--eps '-0.1'"),
    (['--eps', '2'], 'outside [0, 1]'),
    (['--attacks', 'pgd20,cw'], "unknown attack 'cw'"),
    (['--n-examples', '5000'], '--n-examples 5000 is out of range'),
    (['--dataset', 'cifar100', '--data-dir', '{tmp}/nowhere'], 'cifar100 not found'),
    (['--checkpoint', '{ckpt}'], 'missing keys'),
    (['--checkpoint', '{tmp}/corrupt.pth'], 'is not a readable torch file'),
    (['--device', 'tpu'], '--device'),
    # model kwargs timm_moe refuses with a plain ValueError are the user's error, not a bug (exit 2, one line)
    (['--model-kwargs', 'width=8,gate=bogus'], "gate='bogus'"),
    (['--model-kwargs', 'width=8,k=8'], "k=8: fixed by the model name 'resnet18_blockmoe_e4_k1'"),
])
def test_cli_bad_input_gives_one_line_and_no_result(tmp_path, capsys, mismatched_checkpoint, extra, message):
    out = tmp_path / 'res.json'
    (tmp_path / 'corrupt.pth').write_bytes(mismatched_checkpoint.read_bytes()[:200])  # a truncated download
    extra = [e.format(tmp=tmp_path, ckpt=mismatched_checkpoint) for e in extra]
    rc = cli.main(_argv(out, *extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith('timm-moe eval: error:') and message in err, err
    assert not out.exists() and not (tmp_path / f'res.json{SIDECAR_SUFFIX}').exists()


@pytest.mark.parametrize('header', ['{"fingerprint": {"eps"', '[1, 2]'])
def test_cli_resume_with_a_corrupt_sidecar_header_is_one_line(tmp_path, capsys, header):
    out = tmp_path / 'res.json'
    side = tmp_path / f'res.json{SIDECAR_SUFFIX}'
    side.write_text(header + '\n')  # torn or foreign: not the header an evaluation writes
    rc = cli.main(_argv(out, '--resume'))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and 'first line of' in err and str(side) in err, err
    assert side.read_text() == header + '\n' and not out.exists()  # left for the user to inspect


def test_cli_never_replaces_a_result_or_drops_a_partial_run_unasked(tmp_path, capsys):
    out = tmp_path / 'res.json'
    side = tmp_path / f'res.json{SIDECAR_SUFFIX}'
    out.write_text('{"kept": 1}')
    side.write_text('{"fingerprint": {}}\n')
    for extra, message in [((), 'already holds a result'), (('--resume', '--overwrite'), 'contradict')]:
        assert cli.main(_argv(out, *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    out.unlink()
    assert cli.main(_argv(out)) == 2
    assert 'holds a partial evaluation; pass --resume' in capsys.readouterr().err
    assert side.read_text() == '{"fingerprint": {}}\n'  # the killed run's batches are still there
    out.write_text('{"kept": 1}')
    assert cli.main(_argv(out, '--overwrite', '--no-per-expert')) == 0
    assert json.loads(out.read_text())['n_examples'] == 8 and not side.exists()


def test_cli_checkpoint_mismatch_names_keys_and_counts(tmp_path, capsys, mismatched_checkpoint):
    assert cli.main(_argv(tmp_path / 'r.json', '--checkpoint', str(mismatched_checkpoint))) == 2
    err = capsys.readouterr().err
    assert re.search(r'\d+ missing keys \(layer4\.1\.', err), err
    assert re.search(r'\d+ unexpected keys \(layer4\.1\.[^)]*, \.\.\.\)', err), err


def test_cli_refuses_weights_trained_as_another_model(tmp_path, capsys):
    # top-k routing changes no weight: an E4 k=1 run loads into E4 k=2 without a key error, so only the run's
    # config.yaml can catch the mix-up
    run = tmp_path / 'run'
    run.mkdir()
    net = timm.create_model('resnet18_blockmoe_e4_k1', width=8, in_chans=1, num_classes=10)
    torch.save(net.state_dict(), run / 'model.pth')
    (run / 'config.yaml').write_text('model: resnet18_blockmoe_e4_k1\nmodel_kwargs:\n  width: 8\n')
    argv = ['eval', '--model', 'resnet18_blockmoe_e4_k2', '--checkpoint', str(run / 'model.pth'), '--dataset', DATA,
            '--n-examples', '8', '--attacks', 'pgd10', '--no-progress']
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'was trained as resnet18_blockmoe_e4_k1' in err[0], err


def test_cli_end_to_end_with_run_config_interrupt_and_resume(tmp_path, capsys, monkeypatch, tiny_trained):
    run = tmp_path / 'run'
    run.mkdir()
    torch.save(unwrap(tiny_trained).state_dict(), run / 'model.pth')
    (run / 'config.yaml').write_text('model: resnet18_blockmoe_e4_k1\nmodel_kwargs:\n  width: 8\n')
    out = tmp_path / 'res.json'
    argv = ['eval', '--model', 'resnet18_blockmoe_e4_k1', '--checkpoint', str(run / 'model.pth'), '--dataset', DATA,
            '--n-examples', '16', '--batch-size', '8', '--attacks', 'pgd10', '--n-check', '8', '--no-progress',
            '--json', str(out)]
    # kill the run in its second attack batch: nothing may look complete
    calls = {'n': 0}
    real_call = PGD.__call__

    def dying(self, model, x, y):
        calls['n'] += 1
        if calls['n'] == 2:
            raise KeyboardInterrupt
        return real_call(self, model, x, y)

    monkeypatch.setattr(PGD, '__call__', dying)
    assert cli.main(argv) == 130
    side = tmp_path / f'res.json{SIDECAR_SUFFIX}'
    assert not out.exists() and len(side.read_text().splitlines()) == 2  # header + batch 0
    assert (tmp_path / f'res.json{SIDECAR_SUFFIX}.adv' / 'pgd10-0.pt').is_file()
    monkeypatch.setattr(PGD, '__call__', real_call)
    assert cli.main(argv + ['--resume']) == 0
    result = json.loads(out.read_text())
    assert not side.exists() and not (tmp_path / f'res.json{SIDECAR_SUFFIX}.adv').exists()
    assert result['settings']['model_kwargs']['width'] == 8  # from the run's config.yaml
    x, y = eval_tensors(DATA, 16)
    direct = evaluate_model(tiny_trained, x, y, attacks='pgd10', batch_size=8, per_expert=False, n_check=8)
    assert result['correct'] == direct.correct and result['clean_acc'] == direct.clean_acc
    assert 'Sanity and gradient-masking checks' in capsys.readouterr().out
