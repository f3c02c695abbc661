"""The registered models keep timm's model API (tests parametrised over every registered name)."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_moe
from timm_moe.introspection import moe_layers

MOE_NAMES = timm.list_models('*moe_e*')
# every family (arch x kind), every k, the smallest and largest E, and the dense baselines: the per-name tests
# below run on these (test_every_variant_is_registered and test_spec.py cover every name)
ALL_NAMES = [n for n in MOE_NAMES if any(n.endswith(t) for t in ('_e2_k1', '_e4_k1', '_e4_k2', '_e4_k3', '_e4_k4',
                                                                 '_e32_k2'))] + timm.list_models('*_dense')
SMALL = dict(width=8, num_classes=10)  # same graph as the paper's models, a fraction of the cost


def test_every_variant_is_registered():
    families = [('resnet18', 'block'), ('resnet18', 'conv'), ('resnet50', 'block'), ('resnet50', 'conv'),
                ('wide_resnet50_2', 'block')]
    expected = {f'{arch}_{kind}moe_e{e}_k{k}' for arch, kind in families for e in (2, 4, 8, 16, 32)
                for k in (1, 2, 3, 4) if k <= e}
    assert set(MOE_NAMES) == expected and len(MOE_NAMES) == 90
    assert set(timm.list_models('*_dense')) == {'resnet18_dense', 'resnet50_dense', 'wide_resnet50_2_dense'}
    # the plugin's own listing by family agrees with timm's
    assert set(timm_moe.model_names()) == set(MOE_NAMES) | set(timm.list_models('*_dense'))
    assert timm_moe.model_names('resnet18', 'conv') == [f'resnet18_convmoe_e{e}_k{k}' for e in (2, 4, 8, 16, 32)
                                                          for k in (1, 2, 3, 4) if k <= e]
    assert timm_moe.model_names(kind=None) == ['resnet18_dense', 'resnet50_dense', 'wide_resnet50_2_dense']


@pytest.mark.parametrize('name', ALL_NAMES)
def test_forward_backward(name):
    model = timm.create_model(name, **SMALL).train()
    out = model(torch.rand(4, 3, 32, 32))
    assert out.shape == (4, 10)
    (out.square().mean() + timm_moe.aux_loss(model)).backward()

    routed = {}
    for prefix, layer in moe_layers(model):
        for e in layer.last_routing.indices.unique().tolist():
            routed[f'{prefix}.experts.{e}.'] = True
    for pname, p in model.named_parameters():
        assert p.grad is not None, f'{pname} got no gradient'
        if '.experts.' not in pname:
            continue
        expert_prefix = pname[:pname.index('.experts.') + len('.experts.')] + pname.split('.experts.')[1].split('.')[0] + '.'
        if expert_prefix in routed and pname.endswith('conv1.weight'):
            assert p.grad.abs().sum() > 0, f'{pname} was routed to but has a zero gradient'
        if expert_prefix not in routed:
            assert p.grad.abs().sum() == 0, f'{pname} got no image but a non-zero gradient'


@pytest.mark.parametrize('name', ALL_NAMES)
def test_pretrained_cfg_matches_state_dict(name):
    model = timm.create_model(name, **SMALL)
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state
    assert state[cfg['first_conv'] + '.weight'].shape[1] == cfg['input_size'][0]
    assert cfg['classifier'] + '.weight' in state
    assert timm.create_model(name, width=8).num_classes == cfg['num_classes'] == 100


# CIFAR-100 training-set channel statistics, as published (e.g. by the reference's data module and most
# CIFAR-100 code bases); independent of the constants the cfg is built from
CIFAR100_TRAIN_MEAN = (0.50707516, 0.48654887, 0.44091784)
CIFAR100_TRAIN_STD = (0.26733429, 0.25643846, 0.27615047)


def test_pretrained_cfg_against_independent_facts():
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=8).eval()
    cfg = model.pretrained_cfg
    assert cfg['mean'] == pytest.approx(CIFAR100_TRAIN_MEAN, abs=1e-4)
    assert cfg['std'] == pytest.approx(CIFAR100_TRAIN_STD, abs=1e-4)
    # input_size is what the model is built for: its stem takes that many channels, and an input of that
    # size comes out of forward_features as the cfg's pool_size
    assert cfg['input_size'][0] == model.conv1.in_channels
    with torch.no_grad():
        feats = model.forward_features(torch.rand(1, *cfg['input_size']))
    assert tuple(feats.shape[-2:]) == tuple(cfg['pool_size'])
    assert cfg['input_size'][1:] == (32, 32)  # CIFAR images, as in the paper


@pytest.mark.parametrize('name', ['resnet18_blockmoe_e4_k2', 'resnet50_blockmoe_e2_k1', 'resnet18_dense'])
def test_timm_api(name, tmp_path):
    model = timm.create_model(name, width=8, num_classes=7, in_chans=1).eval()
    x = torch.rand(2, 1, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 4, 4)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    assert model.get_classifier().out_features == 3

    # local weights load the timm way, and state_dict round-trips exactly; the overlay must state
    # num_classes, or timm drops a classifier whose size differs from the cfg's 100
    path = tmp_path / 'w.pth'
    torch.save(model.state_dict(), path)
    overlay = dict(file=str(path), num_classes=3, input_size=(1, 32, 32))
    loaded = timm.create_model(name, width=8, num_classes=3, in_chans=1, pretrained=True,
                               pretrained_cfg_overlay=overlay).eval()
    torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize('stem,reductions', [('cifar', [1, 1, 2, 4, 8]), ('imagenet', [2, 4, 8, 16, 32])])
def test_features_only(stem, reductions):
    model = timm.create_model('resnet18_blockmoe_e4_k2', width=8, stem=stem, features_only=True)
    size = 64
    feats = model(torch.rand(2, 3, size, size))
    assert model.feature_info.reduction() == reductions
    assert [f.shape[-1] for f in feats] == [size // r for r in reductions]
    assert [f.shape[1] for f in feats] == model.feature_info.channels()


def test_moe_placement_all_and_last():
    last = timm.create_model('resnet18_blockmoe_e4_k1', width=8)
    every = timm.create_model('resnet18_blockmoe_e4_k1', width=8, placement='all')
    assert [n for n, _ in moe_layers(last)] == ['layer4.1']
    assert [n for n, _ in moe_layers(every)] == ['layer4.0', 'layer4.1']
    assert every(torch.rand(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize('gate', ['gap_fc', 'conv_gap'])
def test_gates(gate):
    model = timm.create_model('resnet18_blockmoe_e4_k2', width=8, gate=gate).eval()
    layer = model.layer4[1]
    seen = {}
    handle = layer.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0]))
    with torch.no_grad():
        model(torch.rand(3, 3, 32, 32))
    handle.remove()
    x = seen['inp']
    if gate == 'conv_gap':  # Conv3x3(C, E), no padding, no bias, then the mean over space
        conv = layer.gate.conv
        assert conv.kernel_size == (3, 3) and conv.padding == (0, 0) and conv.stride == (1, 1) and conv.bias is None
        assert conv.in_channels == x.shape[1] and conv.out_channels == 4
        expected = F.conv2d(x, conv.weight).mean(dim=(2, 3))
    else:  # the mean over space, then Linear(C, E) with bias
        fc = layer.gate.fc
        assert fc.in_features == x.shape[1] and fc.out_features == 4 and fc.bias is not None
        expected = x.mean(dim=(2, 3)) @ fc.weight.T + fc.bias
    r = timm_moe.last_routing(model)['layer4.1']
    torch.testing.assert_close(r['probs'], expected.softmax(-1), rtol=1e-5, atol=1e-6)
    assert r['indices'].shape == (3, 2)
    torch.testing.assert_close(r['weights'].sum(1), torch.ones(3))


def test_eval_is_deterministic_even_with_noisy_gating():
    model = timm.create_model('resnet18_blockmoe_e8_k2', width=8, noisy_gating=True).eval()
    x = torch.rand(8, 3, 32, 32)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_noisy_gating_changes_training_selection_only():
    model = timm.create_model('resnet18_blockmoe_e8_k1', width=8, noisy_gating=True).train()
    x = torch.rand(64, 3, 32, 32)
    picks = set()
    for _ in range(4):
        model(x)
        picks.add(tuple(timm_moe.last_routing(model)['layer4.1']['indices'].flatten().tolist()))
    assert len(picks) > 1, 'noise never changed the selection in training'


@pytest.mark.parametrize('k,inner', [(1, 64), (2, 32), (4, 16)])
def test_matched_experts_shrink_inner_width(k, inner):
    model = timm.create_model(f'resnet18_blockmoe_e4_k{k}', width=8, expert_width='matched')
    expert = moe_layers(model)[0][1].experts[0]
    assert expert.conv1.out_channels == inner and expert.conv2.out_channels == 64


def test_matched_experts_pay_for_the_downsample_with_all_placement():
    # layer4.0 keeps a full-width 1x1 downsample per expert, so k=2 must shrink below half width
    model = timm.create_model('resnet18_blockmoe_e4_k2', width=8, expert_width='matched', placement='all')
    assert moe_layers(model)[0][1].experts[0].conv1.out_channels < 32


@pytest.mark.parametrize('kwargs,match', [
    (dict(k=0), r"k=0: fixed by the model name 'resnet18_blockmoe_e8_k2'; pick the name instead"),
    (dict(k=16), 'k=16: fixed by the model name'),
    (dict(num_experts=-1), 'num_experts=-1: fixed by the model name'),
    (dict(gate='mlp'), "gate='mlp'"),
    (dict(aux_loss='l2'), "aux_loss='l2'"),
    (dict(placement='first'), "placement='first': target 'first' selects no residual block"),
    (dict(stem='deep'), "stem='deep'"),
    (dict(expert_width='half'), "expert_width='half'"),
])
def test_bad_kwargs_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('resnet18_blockmoe_e8_k2', width=8, **kwargs)


def test_wrong_input_rank():
    model = timm.create_model('resnet18_blockmoe_e2_k1', width=8)
    with pytest.raises(ValueError, match='4D input'):  # timm's ResNet (its BatchNorm) refuses it
        model(torch.rand(3, 32, 32))


@pytest.mark.parametrize('k', [1, 2])
def test_autocast_and_channels_last(k):
    # the CUDA path uses fp16 autocast and channels_last; bf16 autocast on CPU exercises the same dtype plumbing
    model = timm.create_model(f'resnet18_blockmoe_e4_k{k}', width=8).train().to(memory_format=torch.channels_last)
    x = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
        loss = out.float().logsumexp(1).mean() + timm_moe.aux_loss(model)
    assert out.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    assert model.layer4[1].gate.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('gate', ['gap_fc', 'conv_gap'])
def test_gates_keep_pytorch_default_init_after_timm_init(gate):
    # at the paper's width, timm's Kaiming fan_out on the gate (28x the default scale for Conv-GAP) makes the
    # mean top-1 probability 0.87-1.0 at E=4; PyTorch's default init gives 0.28-0.54 (1/E = 0.25; seeds 0-4,
    # with the reference's stem init, whose larger scale than Kaiming fan_out's moved the top from 0.44)
    for seed in range(3):
        torch.manual_seed(seed)
        model = timm.create_model('resnet18_blockmoe_e4_k1', gate=gate).eval()
        layer = model.layer4[1].gate
        weight = layer.fc.weight if gate == 'gap_fc' else layer.conv.weight
        bound = 1 / math.sqrt(weight[0].numel())  # kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), ..)
        assert weight.abs().max() <= bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        with torch.no_grad():
            model(torch.rand(16, 3, 32, 32))
        top1 = timm_moe.last_routing(model)['layer4.1']['probs'].max(1).values.mean().item()
        assert 0.25 <= top1 < 0.6, f'seed {seed}: mean top-1 gate probability {top1:.3f} at init'


@pytest.mark.parametrize('aux_loss,noisy', [('switch', True), ('kl', True), ('z_loss', True),
                                            ('entropy', False), ('none', False)])
def test_noisy_gating_auto_follows_the_reference_policy(aux_loss, noisy):
    model = timm.create_model('resnet18_blockmoe_e8_k1', width=8, aux_loss=aux_loss, placement='all')
    assert model.moe_config['noisy_gating'] is noisy
    assert [m.noisy_gating for _, m in moe_layers(model)] == [noisy, noisy]
    # the effective flag drives the selection: noise makes repeated training forwards pick differently
    model.train()
    x = torch.rand(64, 3, 32, 32)
    picks = set()
    for _ in range(3):
        model(x)
        picks.add(tuple(timm_moe.last_routing(model)['layer4.1']['indices'].flatten().tolist()))
    assert (len(picks) > 1) is noisy


@pytest.mark.parametrize('explicit', [True, False])
@pytest.mark.parametrize('aux_loss', ['switch', 'entropy'])
def test_noisy_gating_explicit_bool_overrides_auto(explicit, aux_loss):
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=8, aux_loss=aux_loss, noisy_gating=explicit)
    assert model.moe_config['noisy_gating'] is explicit and model.layer4[1].noisy_gating is explicit


@pytest.mark.parametrize('bad', ['yes', 'True', 1, 0])  # None: timm.create_model drops it (the default)
@pytest.mark.parametrize('name', ['resnet18_blockmoe_e4_k1', 'resnet18_convmoe_e4_k1'])
def test_noisy_gating_rejects_other_values(bad, name):
    with pytest.raises(ValueError, match=r"noisy_gating=.*: expected one of 'auto', True, False"):
        timm.create_model(name, width=8, noisy_gating=bad)


def _checkpointed_step(name='resnet18_blockmoe_e4_k2', **kwargs):
    model = timm.create_model(name, width=8, num_classes=10, **kwargs).train()
    model.set_grad_checkpointing(True)
    timm_moe.reset_routing_stats(model)
    out = model(torch.rand(6, 3, 32, 32))
    (out.square().mean() + timm_moe.aux_loss(model)).backward()
    return model


def test_grad_checkpointing_counts_each_image_once():
    # the recomputation forward inside backward must not add the batch to the statistics again
    model = _checkpointed_step()
    assert timm_moe.routing_stats(model)['layer4.1']['images'] == 6
    assert model.layer4[1].gate.fc.weight.grad.abs().sum() > 0
    # the idle-expert counters count the recomputation too (the same routing again): it doubles the counts and
    # never turns an idle expert into a used one. Non-reentrant checkpointing is timm's default since it has
    # set_reentrant_ckpt (the next test turns the reentrant kind on and back off): 2 counted forwards of 6 images x
    # k=2 slots. An older timm (1.0.9) checkpoints reentrantly, torch's old default: its first forward runs without
    # grad and only the recomputation is counted, once
    forwards_counted = 2 if 'set_reentrant_ckpt' in vars(timm.layers) else 1
    usage, forwards = model.layer4[1].usage()
    assert (usage.sum().item(), forwards) == (forwards_counted * 6 * 2, forwards_counted)


def test_reentrant_checkpointing_counts_once_and_warns_that_the_aux_loss_had_no_grad():
    set_reentrant = pytest.importorskip('timm.layers').__dict__.get('set_reentrant_ckpt')
    if set_reentrant is None:
        pytest.skip('this timm has no set_reentrant_ckpt')
    set_reentrant(True)
    try:
        # the original forward ran without grad: aux_loss says so when asked, the layer again in backward
        with pytest.warns(RuntimeWarning, match='layer4.1: the aux loss had no gradient'), \
                pytest.warns(RuntimeWarning, match='timm_moe.aux_loss: .* no gradient'):
            model = _checkpointed_step()
    finally:
        set_reentrant(False)
    assert timm_moe.routing_stats(model)['layer4.1']['images'] == 6


@pytest.mark.parametrize('stem', ['cifar', 'imagenet'])
def test_pool_size_is_the_real_final_feature_map(stem):
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=8, stem=stem).eval()
    cfg = model.pretrained_cfg
    with torch.no_grad():
        feats = model.forward_features(torch.rand(2, *cfg['input_size']))
    assert tuple(feats.shape[-2:]) == tuple(cfg['pool_size']) == {'cifar': (4, 4), 'imagenet': (1, 1)}[stem]
    # and for an input size given in the overlay
    big = timm.create_model('resnet18_dense', width=8, stem=stem, pretrained_cfg_overlay=dict(input_size=(3, 72, 72)))
    with torch.no_grad():
        feats = big.eval().forward_features(torch.rand(1, 3, 72, 72))
    assert tuple(feats.shape[-2:]) == tuple(big.pretrained_cfg['pool_size'])


@pytest.mark.parametrize('kwargs,size,match,ok_size', [
    (dict(), 16,
     r'layer4\.1: the conv_gap gate needs an input of at least 3x3 \(model input at least 17x17\), got 2x2', 17),
    (dict(stem='imagenet'), 64,
     r'layer4\.1: the conv_gap gate needs an input of at least 3x3 \(model input at least 65x65\), got 2x2', 65),
    # every layer4 block: layer4.0 sees layer3's output, 4x larger than layer4.1's (cifar stem)
    (dict(placement='all'), 8,
     r'layer4\.0: the conv_gap gate needs an input of at least 3x3 \(model input at least 9x9\), got 2x2', 17),
])
def test_conv_gap_on_too_small_an_input_names_the_layer_and_minimum(kwargs, size, match, ok_size):
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=8, gate='conv_gap', **kwargs).eval()
    with pytest.raises(ValueError, match=match):
        model(torch.rand(1, 3, size, size))
    model(torch.rand(1, 3, ok_size, ok_size))


def test_factory_kwargs_device_and_dtype():
    meta = timm.create_model('resnet18_blockmoe_e8_k2', device='meta')
    assert {p.device.type for p in meta.parameters()} == {'meta'}
    assert {b.device.type for b in meta.buffers()} == {'meta'}
    half = timm.create_model('resnet18_blockmoe_e4_k2', width=8, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half(torch.rand(2, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match='dtype=torch.int64: expected a floating-point torch.dtype'):
        timm.create_model('resnet18_dense', width=8, dtype=torch.int64)


def test_features_only_fx_matches_the_hook_free_extractor():
    fx = timm.create_model('resnet18_blockmoe_e4_k2', width=8, features_only=True, feature_cls='fx').eval()
    listed = timm.create_model('resnet18_blockmoe_e4_k2', width=8, features_only=True).eval()
    listed.load_state_dict({k.replace('graph_module.', '', 1): v for k, v in fx.state_dict().items()})
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        feats, expected = fx(x), listed(x)
    assert [f.shape[1] for f in feats] == fx.feature_info.channels()
    for a, b in zip(feats, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('name', ['resnet18_blockmoe_e4_k1', 'resnet18_blockmoe_e4_k2', 'resnet50_blockmoe_e2_k1',
                                  'resnet18_convmoe_e4_k1', 'resnet50_convmoe_e4_k3'])
def test_model_forward_and_backward_fx(name):
    # as timm's own test_model_forward_fx / test_model_backward_fx: torchvision's extractor, timm's leaf modules
    from timm.models._features_fx import get_graph_node_names, get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor
    model = timm.create_model(name, **SMALL)
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model)
    leaves = [n for n, _ in moe_layers(model)]
    assert set(leaves) <= set(eval_nodes) & set(train_nodes), 'an MoE layer was traced through, not kept as a leaf'
    fx = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                  tracer_kwargs=tracer_kwargs)
    x = torch.rand(2, 3, 32, 32)
    fx.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fx(x)[eval_nodes[-1]], model(x))
    fx.train()
    out = fx(x)[train_nodes[-1]]
    out.mean().backward()
    missing = [n for n, p in fx.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing[:3]}'


def test_the_timm_109_convnext_xfail_is_timm_s_own_behaviour():
    # the timm suite xfails forward_intermediates for the converted ConvNeXt on timm < 1.0.10 because timm's own
    # ConvNeXt returns the stem's map too there; the plain model must show the same count as the converted one
    old = tuple(int(p) for p in timm.__version__.split('.')[:3] if p.isdigit()) < (1, 0, 10)
    x = torch.rand(1, 3, 64, 64)
    for model in (timm.create_model('convnext_atto'),
                  timm_moe.create_model('convnext_atto', convert=dict(targets='stages.3.blocks.*', num_experts=2,
                                                                        k=1, copy_weights=True))):
        _, maps = model.eval().forward_intermediates(x)
        assert len(maps) == len(model.feature_info) + old, (timm.__version__, len(maps))
