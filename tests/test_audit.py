"""Tests of `timm-moe audit` (bench.audit, bench.audit.flops, bench.audit.latency).

FLOPs are in fvcore's unit, 1 FLOP = 1 multiply-accumulate (MAC). Models are small (width 16) except one
test that checks the paper's headline numbers on the CIFAR ResNet-18 at width 64 (FLOPs only, no timing).
"""
from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn

import timm_moe
from bench import cli
from bench.audit.audit import audit_model
from bench.cli.audit import _targets, model_kwargs_of
from bench.core.errors import UserError
from bench.audit.flops import flop_table, moe_flops, per_image_by_module
from bench.audit.latency import latency_vs_dense, peak_forward_bytes
from timm_moe.layers import MoE

# a tiny MoE with experts of different cost, so that the active count shows the routing
C, H, W = 4, 6, 6
CONV3 = C * C * 9 * H * W  # 3x3 conv C->C, padding 1: MACs = C_in * C_out * 9 per output pixel
CONV1 = C * C * 1 * H * W  # 1x1 conv C->C
GATE = C * H * W + C * 2  # GAP-FC: fvcore counts the pool as one FLOP per input element, the FC as C*E MACs


def _tiny_moe(k: int = 1) -> MoE:
    experts = [nn.Conv2d(C, C, 3, padding=1, bias=False), nn.Conv2d(C, C, 1, bias=False)]
    return MoE(experts, C, k=k, gate='gap_fc').eval()


def test_hand_computed_flops_of_tiny_blockmoe():
    moe = _tiny_moe(k=1)
    images = torch.rand(16, C, H, W)
    report = moe_flops(moe, images)
    layer = report.layers['']
    assert layer.expert_flops == [CONV3, CONV1]
    assert report.non_expert == GATE
    assert report.gates == GATE  # the gate is the layer's only non-expert cost
    assert report.total == GATE + CONV3 + CONV1
    assert report.active_worst == GATE + CONV3
    counts = layer.counts
    assert sum(counts) == 16
    assert report.active == pytest.approx(GATE + (counts[0] * CONV3 + counts[1] * CONV1) / 16)


def test_active_flops_follow_the_routing():
    moe = _tiny_moe(k=1)
    images = torch.rand(8, C, H, W)
    with timm_moe.force_expert(moe, 0):
        all_big = moe_flops(moe, images)
    with timm_moe.force_expert(moe, 1):
        all_small = moe_flops(moe, images)
    # forced: the gate is bypassed, every image runs exactly the forced expert
    assert all_big.active == CONV3 and all_big.layers[''].counts == [8, 0]
    assert all_small.active == CONV1 and all_small.layers[''].counts == [0, 8]
    # spread: bias the gate so that images split between the experts, and the count moves with the split
    with torch.no_grad():
        moe.gate.fc.weight.zero_()
        moe.gate.fc.weight[0, 0] = 50.0
        moe.gate.fc.bias.copy_(torch.tensor([0.0, 25.0]))
    images = torch.rand(8, C, H, W)
    images[:3, 0] = 1.0  # pooled channel 0 = 1: score 50 > 25, expert 0
    images[3:, 0] = 0.0  # pooled channel 0 = 0: expert 1
    spread = moe_flops(moe, images)
    assert spread.layers[''].counts == [3, 5]
    assert spread.active == pytest.approx(GATE + (3 * CONV3 + 5 * CONV1) / 8)
    assert CONV1 < spread.active < CONV3 + GATE


def test_k2_runs_both_experts_and_torch_counter_agrees():
    moe = _tiny_moe(k=2)
    images = torch.rand(4, C, H, W)
    fv, tc = moe_flops(moe, images), moe_flops(moe, images, counter='torch')
    assert fv.layers[''].counts == [4, 4]
    assert fv.active == GATE + CONV3 + CONV1
    # FlopCounterMode counts no pooling, so only the gate's pool differs
    assert tc.active == fv.active - C * H * W


def test_per_module_table_weights_experts_by_routing():
    moe = _tiny_moe(k=1)
    with timm_moe.force_expert(moe, 1):
        report = moe_flops(moe, torch.rand(4, C, H, W))
    by_module = per_image_by_module(report, 'active')
    assert by_module['experts.0'] == 0 and by_module['experts.1'] == CONV1 and by_module[''] == CONV1
    assert per_image_by_module(report, 'total')[''] == CONV3 + CONV1
    assert 'experts.1' in flop_table(moe, report)


def test_the_table_shows_the_per_image_counts_without_running_the_model(monkeypatch):
    moe = _tiny_moe(k=1)
    images = torch.rand(8, C, H, W)
    images[:2, 0], images[2:, 0] = 1.0, 0.0
    with torch.no_grad():  # 2 images to the 3x3 expert, 6 to the 1x1 one: the table weights them, no trace does
        moe.gate.fc.weight.zero_()
        moe.gate.fc.weight[0, 0] = 50.0
        moe.gate.fc.bias.copy_(torch.tensor([0.0, 25.0]))
    report = moe_flops(moe, images)
    assert report.layers[''].counts == [2, 6]

    def no_forward(*args, **kwargs):
        raise AssertionError('the table traced the model')
    monkeypatch.setattr(moe, 'forward', no_forward)
    rows = {line.split('|')[1].strip(): line.split('|')[3].strip() for line in flop_table(moe, report).splitlines()
            if line.startswith('|') and 'module' not in line and '---' not in line}
    # per image: 2/8 of the 3x3 expert (5184 MACs), 6/8 of the 1x1 one (576); one traced image would give 5184 or 576
    assert (rows['experts.0'], rows['experts.1'], rows['model']) == ('1.296K', '0.432K', '1.88K')


def test_the_count_gives_back_every_submodules_mode():
    moe = _tiny_moe(k=1).train()
    moe.experts[1].eval()  # e.g. a frozen part: the audit must not unfreeze it
    moe_flops(moe, torch.rand(4, C, H, W))
    assert moe.training and moe.gate.training and moe.experts[0].training and not moe.experts[1].training


def test_the_routing_counted_is_this_batch_not_an_earlier_forward():
    moe = _tiny_moe(k=2)
    with torch.no_grad():
        moe(torch.rand(3, C, H, W))  # an earlier forward of another batch size leaves its routing behind
    assert moe_flops(moe, torch.rand(5, C, H, W)).layers[''].counts == [5, 5]
    with timm_moe.force_expert(moe, 0):
        assert moe_flops(moe, torch.rand(5, C, H, W)).layers[''].counts == [5, 0]


def test_paper_numbers_resnet18_cifar():
    """0.557 GFLOPs dense; k=2 at layer4.1 adds one BasicBlock (0.0755 G): +13.6%; k=1 only the gate."""
    k2 = audit_model('resnet18_blockmoe_e4_k2', latency=False, batch=4)
    assert round(k2.flops_dense / 1e9, 3) == 0.557
    assert round(k2.flops_active - k2.flops_dense) == pytest.approx(0.0755e9 + 512 * 16 + 512 * 4, rel=1e-3)
    assert round(k2.flops_ratio, 3) == 1.136
    assert k2.flop_counter_agreement < 0.01
    assert k2.flop_counter['mac_ops_relative_difference']['model'] < 1e-9
    # active params = dense - layer4.1 + gate + 2 experts = dense + one BasicBlock(512) + GAP-FC(512 -> 4)
    block = 2 * 512 * 512 * 9 + 2 * 2 * 512
    assert k2.params_active - k2.params_dense == block + 512 * 4 + 4
    assert k2.params_total - k2.params_dense == 3 * block + 512 * 4 + 4


@pytest.mark.parametrize('k', [1, 2, 4])
def test_matched_experts_cost_no_more_than_dense(k):
    r = audit_model(f'resnet18_blockmoe_e4_k{k}', width=16, latency=False, batch=8, expert_width='matched')
    assert r.flops_ratio <= 1.001, r.flops_ratio
    assert r.flops_ratio_worst <= 1.001
    assert r.flop_counter_agreement < 0.01


def test_audit_hand_computed_extra_block_width16():
    # width 16: layer4 has 128 channels at 4x4; a BasicBlock = 2 convs 128*128*9*16 + 2 BN (2 per element)
    block = 2 * 128 * 128 * 9 * 16 + 2 * 2 * 128 * 16
    gate = 128 * 16 + 128 * 2  # GAP over 128x4x4 + FC 128->2
    r = audit_model('resnet18_blockmoe_e2_k2', width=16, latency=False, batch=4)
    assert r.flops_active - r.flops_dense == block + gate
    assert r.flops_total == r.flops_active  # E=2, k=2: every expert runs
    assert r.model_kwargs == {'width': 16}
    assert r.dense_model == 'resnet18_dense' and r.dense_kwargs == {'width': 16}
    assert r.unsupported_ops  # listed, never hidden
    assert 'aten::index_select' in r.unsupported_ops


def test_cli_gate_exits_nonzero_naming_model(capsys, tmp_path):
    out = tmp_path / 'audit.json'
    rc = cli.main(['audit', '--model', 'resnet18_blockmoe_e2_k2', '--model', 'resnet18_blockmoe_e2_k1',
                   '--model-kwargs', 'width=16', '--no-latency', '--max-flops-ratio', '1.001', '--json', str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    fails = [l for l in err.splitlines() if 'FAIL' in l]
    assert len(fails) == 1 and 'resnet18_blockmoe_e2_k2' in fails[0]
    data = json.loads(out.read_text())
    assert [d['model'] for d in data] == ['resnet18_blockmoe_e2_k2', 'resnet18_blockmoe_e2_k1']
    for key in ('model', 'flops_active', 'flops_total', 'flops_dense', 'flops_ratio', 'params_total',
                'params_active', 'latency_ms', 'latency_ratio', 'unsupported_ops', 'flops_active_worst',
                'flops_ratio_worst', 'flops_total_ratio', 'flop_counter_agreement', 'model_kwargs'):
        assert key in data[0], key
    assert data[1]['flops_ratio'] <= 1.001

    rc = cli.main(['audit', '--model', 'resnet18_blockmoe_e2_k1', '--model-kwargs', 'width=16', '--no-latency',
                   '--max-flops-ratio', '1.001'])
    assert rc == 0 and 'PASS' in capsys.readouterr().err


@pytest.mark.parametrize('argv, needle', [
    (['--model', 'resnet18_blockmoe_e3_k1'], "unknown model 'resnet18_blockmoe_e3_k1'"),
    (['--model', 'resnet18_blockmoe_e2_k1', '--max-flops-ratio', '0'], '--max-flops-ratio 0.0'),
    (['--model', 'resnet18_blockmoe_e2_k1', '--batch-sizes', '1,x'], "--batch-sizes '1,x'"),
    (['--model', 'resnet18_convmoe_e2_k1', '--expert-width', 'matched'], 'a ConvMoE has no compute-matched experts'),
])
def test_cli_bad_input_one_line(capsys, argv, needle):
    rc = cli.main(['audit', '--no-latency', *argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1 and needle in lines[0], captured.err
    assert 'Traceback' not in captured.err


def test_latency_and_memory_json(tmp_path, capsys):
    out = tmp_path / 'a.json'
    rc = cli.main(['audit', '--model', 'resnet18_blockmoe_e2_k1', '--model-kwargs', 'width=8', '--batch-sizes', '1,4',
                   '--repeats', '2', '--warmup', '1', '--json', str(out)])
    assert rc == 0
    r = json.loads(out.read_text())[0]
    assert set(r['latency_ms']) == set(r['latency_ratio']) == {'1', '4'}
    assert all(v > 0 for v in r['latency_ms'].values())
    assert r['latency_ratio']['4'] == pytest.approx(r['latency_ms']['4'] / r['latency_dense_ms']['4'])
    assert r['peak_memory_mb']['4'] > 0 and r['memory_method']


def test_peak_memory_grows_with_batch():
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    small, big = peak_forward_bytes(model, torch.rand(1, 3, 32, 32)), peak_forward_bytes(model, torch.rand(8, 3, 32, 32))
    assert small >= 32 * 32 * 32 * 4  # at least one activation map of floats
    assert big > 4 * small


def test_latency_vs_dense_interleaved():
    a, b = nn.Conv2d(3, 8, 3).eval(), nn.Conv2d(3, 8, 1).eval()
    r = latency_vs_dense(a, b, (3, 8, 8), batch_sizes=(2,), repeats=2, warmup=0, memory=False)
    assert set(r) == {'latency_ms', 'latency_dense_ms', 'latency_ratio'} and r['latency_ratio']['2'] > 0


def test_all_selects_the_set_that_should_pass(capsys):
    parse = cli.build_parser('audit').parse_args
    blockmoe, convmoe = timm.list_models('*blockmoe*'), timm.list_models('*convmoe*')
    assert convmoe and any(n.startswith('wide_resnet50_2_') for n in blockmoe)
    k1 = _targets(parse(['audit', '--all', '--k', '1', '--filter', 'resnet18_*']))
    # 5 BlockMoE names with full and matched experts, 5 ConvMoE names at full width (their only one)
    assert len(k1) == 15 and {w for _, w in k1} == {'full', 'matched'}
    assert all(n.startswith('resnet18_') and n.endswith('_k1') for n, _ in k1)
    assert {(n, w) for n, w in k1 if 'convmoe' in n} == {(n, 'full') for n in convmoe if n.startswith('resnet18_')
                                                         and n.endswith('_k1')}
    # matched experts exist for BlockMoE only: ConvMoE names are skipped, and said to be
    matched = _targets(parse(['audit', '--all', '--expert-width', 'matched']))
    assert len(matched) == len(blockmoe) and {w for _, w in matched} == {'matched'}
    assert f'skips {len(convmoe)} ConvMoE name(s)' in capsys.readouterr().err
    everything = _targets(parse(['audit', '--all']))
    assert len(everything) == 2 * len(blockmoe) + len(convmoe)
    assert {n for n, _ in everything} == set(blockmoe) | set(convmoe)  # every family, every arch
    assert {n for n, _ in _targets(parse(['audit', '--all', '--filter', '*convmoe*']))} == set(convmoe)


def test_convmoe_k1_costs_exactly_its_gates_and_the_gate_says_so(capsys, tmp_path):
    """At k=1 an MoE's one expert is a copy of the dense module: active = dense + gates, exactly. A conv_gap gate at
    width 8 costs ConvMoE (one gate per conv) more than 0.1%, so 1.001 over dense fails it, naming it; over
    dense + gates every k=1 model passes 1.0."""
    out = tmp_path / 'a.json'
    argv = ['audit', '--all', '--k', '1', '--filter', 'resnet18_*_e2_k1', '--model-kwargs', 'width=8,gate=conv_gap',
            '--no-latency', '--json', str(out)]
    assert cli.main([*argv, '--max-flops-ratio', '1.001']) == 1
    fails = [line for line in capsys.readouterr().err.splitlines() if 'FAIL' in line]
    assert len(fails) == 1 and 'resnet18_convmoe_e2_k1' in fails[0] and 'active/dense' in fails[0]
    data = json.loads(out.read_text())
    assert [(r['model'], r['model_kwargs'].get('expert_width')) for r in data] == [
        ('resnet18_blockmoe_e2_k1', 'full'), ('resnet18_blockmoe_e2_k1', 'matched'), ('resnet18_convmoe_e2_k1', None)]
    for r in data:
        assert r['flops_gates'] > 0 and r['flops_active'] == r['flops_dense'] + r['flops_gates']
        assert r['flops_ratio_dense_plus_gates'] == 1.0
    conv = data[2]
    assert conv['flops_ratio'] > 1.001 and conv['flops_gates'] > data[0]['flops_gates']  # a gate per conv
    out.unlink()
    assert cli.main([*argv, '--max-flops-ratio', '1.0', '--flops-baseline', 'dense+gates']) == 0
    assert 'PASS: all 3 model(s) have active/(dense+gates) FLOPs <= 1.0' in capsys.readouterr().err


def test_sweep_reports_a_model_that_cannot_be_built_and_goes_on(capsys, tmp_path):
    # matched experts cannot fit k=4 copies of ResNet-50's strided layer4.0 (its downsample is paid k times)
    out = tmp_path / 'a.json'
    rc = cli.main(['audit', '--model', 'resnet50_blockmoe_e4_k4', '--model', 'resnet18_blockmoe_e2_k1',
                   '--expert-width', 'matched', '--model-kwargs', 'placement=all,width=16', '--no-latency',
                   '--json', str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert 'error: resnet50_blockmoe_e4_k4' in err and 'no inner width' in err
    assert [r['model'] for r in json.loads(out.read_text())] == ['resnet18_blockmoe_e2_k1']


def test_audit_takes_model_kwargs_as_train_and_eval_do(capsys):
    """One spelling everywhere: --model-kwargs; the old single-kwarg flags are gone (nothing was released)."""
    parse = cli.build_parser('audit').parse_args
    args = parse(['audit', '--model', 'resnet18_blockmoe_e2_k1', '--model-kwargs', 'width=16,gate=conv_gap',
                  '--num-classes', '10'])
    assert model_kwargs_of(args) == dict(width=16, gate='conv_gap', num_classes=10)
    for old in ('--width', '--moe-blocks', '--placement', '--gate', '--stem'):
        with pytest.raises(SystemExit):
            parse(['audit', '--model', 'resnet18_blockmoe_e2_k1', old, '8'])
    for bad, needle in (('expert_width=matched', '--expert-width'), ('width=0', 'width=0')):
        with pytest.raises(UserError, match=needle):
            model_kwargs_of(parse(['audit', '--model', 'resnet18_blockmoe_e2_k1', '--model-kwargs', bad]))


def test_cli_table_fits_110_columns_without_cutting_a_number(capsys, tmp_path, monkeypatch):
    # in a 110-column terminal the 15-column table was squeezed until every cell was cut ('1.00…')
    monkeypatch.setenv('COLUMNS', '110')
    out = tmp_path / 'audit.json'
    models = ['--model', 'resnet18_blockmoe_e4_k1', '--model', 'resnet18_convmoe_e4_k1']
    assert cli.main(['audit', *models, '--model-kwargs', 'width=8', '--no-latency', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    table = [line for line in text.splitlines() if line.startswith(('┃', '│', '┏', '└'))]
    assert table and max(len(line) for line in table) <= 110 and '…' not in text
    flat = ' '.join(text.split())
    for r in json.loads(out.read_text()):
        row = next(line for line in table if line.startswith(f'│ {r["model"]} '))
        # the ratio --max-flops-ratio gates on, the active FLOPs and the parameters, whole
        for number in (f"{r['flops_ratio']:.4f}", f"{r['flops_active'] / 1e9:.4f}",
                       f"{r['params_total'] / 1e6:.2f} ({r['params_active'] / 1e6:.2f})"):
            assert f' {number} │' in row, (number, row)
    # what is left out is named: the latency columns (empty with --no-latency), those that do not fit
    assert 'no value on any row: latency b1, latency b128, memory b128' in flat
    assert 'not shown here (too narrow):' in flat and '--wide or --json: every column' in flat

    # --wide: every column, however narrow the terminal
    assert cli.main(['audit', *models, '--model-kwargs', 'width=8', '--no-latency', '--wide']) == 0
    wide = capsys.readouterr().out
    head = ' '.join(line for line in wide.splitlines() if line.startswith('┃'))
    assert all(word in head for word in ('unsupported', 'total/dense', 'worst/dense', 'latency', 'memory'))
    assert '…' not in wide and 'not shown here' not in wide


def test_the_routing_note_says_the_model_routing_is_untrained():
    # the audit builds its own model: given a run's test images, it still routes them through untrained weights
    images = torch.rand(4, 1, 28, 28)
    for given in (images, None):
        r = audit_model('resnet18_blockmoe_e2_k1', latency=False, batch=4, images=given, width=8, in_chans=1,
                        input_size=(1, 28, 28))
        assert 'untrained model' in r.routing['note'] and r.routing['batch'] == 4
        assert r.routing['note'].startswith('routing of the images passed in' if given is not None else
                                            'routing of a seeded batch')
