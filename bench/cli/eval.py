"""`timm-moe eval`: clean and robust accuracy per attack and for the per-sample worst case, with sanity checks.

    timm-moe eval --model resnet18_blockmoe_e8_k1 --checkpoint runs/train/model.pth \\
        --dataset cifar100 --attacks standard --n-examples 1000 --json results/aa.json --resume

The model is wrapped with `bench.models.normalized` (the data set's mean/std), so attacks work in [0, 1].
With --json, every finished (attack, batch) is appended to a sidecar `OUT.partial.jsonl` next to it (and its
adversarial examples, which the sanity checks re-verify, and the routing analysis' examples are kept in
`OUT.partial.jsonl.adv/`); --resume skips the batches recorded there, and the final JSON is written atomically
only when everything is done. docs/EVALUATION.md describes the result, the checks and the flags.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bench.attacks.names import NORMS, PRESETS, attack_choices, resolve_attacks
from bench.cli.parser import Verbs
from bench.core.atomic import write_json_atomic
from bench.core.compile import TORCHCOMPILE_DEFAULT, check_torchcompile
from bench.core.errors import UserError
from bench.core.values import parse_eps, parse_mapping
from bench.dataset_table import DATASETS, check_dataset_name
from bench.evaluation.resume import SIDECAR_SUFFIX

# torch, timm and the evaluation load in `run`, after the inputs are checked: --help and a bad value answer at once
if TYPE_CHECKING:
    from bench.evaluation.result import EvalResult


def add_cli(verbs: Verbs) -> None:
    p = verbs.add_parser('eval', help='clean and robust accuracy (PGD, APGD, AutoAttack) with sanity checks',
                              description=__doc__.split('\n\n')[0])
    p.add_argument('--model', required=True, help='timm model name, e.g. resnet18_blockmoe_e8_k1')
    p.add_argument('--checkpoint', type=Path, help="state_dict file (timm's, or a dict with 'state_dict'/'model')")
    p.add_argument('--pretrained', action='store_true',
                   help="the weights of --model's pretrained tag, e.g. --model resnet18_blockmoe_e4_k2.fmnist_pgd "
                        '(shipped tags load offline)')
    p.add_argument('--model-kwargs', default=None, help='k=v,k=v passed to timm.create_model (e.g. width=16); '
                   "defaults from the checkpoint's run config.yaml")
    p.add_argument('--convert', default=None, metavar='K=V,...',
                   help='make the plain timm --model an MoE: timm_moe.convert\'s arguments, e.g. '
                        'targets=stages.3.blocks.*,num_experts=4,k=1 (default: the checkpoint\'s run config.yaml)')
    p.add_argument('--img-size', type=int, default=None,
                   help='resize the images to this side inside the model, after the attack (for an architecture '
                        'that needs larger images than the data set\'s; default: the checkpoint\'s run config.yaml, '
                        'else as they are)')
    p.add_argument('--num-classes', type=int, default=None, help='default: the data set\'s')
    p.add_argument('--in-chans', type=int, default=None, help='default: the data set\'s')
    p.add_argument('--dataset', default=None,
                   help=f'one of {", ".join(DATASETS)} (default: the data set the checkpoint\'s run config.yaml '
                        'or the pretrained tag names, else cifar100)')
    p.add_argument('--data-dir', default=None,
                   help="where the data set lives (default: data/; Fashion-MNIST: Debian's /usr/share/datasets/fashion-mnist)")
    p.add_argument('--download', action='store_true', help='let torchvision download the data set')
    presets = '; '.join(f'{k} = {"+".join(v)}' for k, v in PRESETS.items())
    p.add_argument('--attacks', default='standard',
                   help=f'comma list of {attack_choices()}; presets: {presets}. On a CPU use quick')
    p.add_argument('--n-examples', type=int, default=1000, help='first N test images')
    p.add_argument('--batch-size', type=int, default=128, help='images per attack batch')
    p.add_argument('--eps', default='8/255', help='radius: 8/255 or a float in [0, 1]')
    p.add_argument('--norm', default='Linf', choices=NORMS, help='threat model of every attack')
    p.add_argument('--seed', type=int, default=0, help="the attacks' random seed (random starts, Square)")
    p.add_argument('--json', type=Path, default=None, help='write the result here (atomically, when complete)')
    p.add_argument('--resume', action='store_true', help='skip the batches recorded in the --json sidecar')
    p.add_argument('--overwrite', action='store_true',
                   help='replace an existing --json result, or discard a partial one instead of resuming it')
    p.add_argument('--no-per-expert', action='store_true', help='skip per-expert subpaths, routing and transfer')
    p.add_argument('--per-layer-expert', action='store_true',
                   help='also force each expert in each MoE layer alone, the other layers routing as usual: '
                        'L x E subpaths (the per-expert attacks L x E more times), under per_layer_expert')
    p.add_argument('--n-check', type=int, default=100,
                   help="examples for the sanity checks' extra attacks; their cost grows with it and with the "
                        'attacks, since every attack is re-run at eps 0 (with AutoAttack longer than the attack '
                        'itself on those examples: at eps 0 no point breaks early): bound it with a small --n-check, '
                        'or --no-checks')
    p.add_argument('--no-checks', action='store_true',
                   help='skip the sanity and gradient-masking checks (each is recorded as "not run"); for a quick '
                        'number, never for one to report')
    p.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    p.add_argument('--torchcompile', nargs='?', const=TORCHCOMPILE_DEFAULT, default=None, metavar='BACKEND',
                   help=f'run attacks and checks through torch.compile (bare: {TORCHCOMPILE_DEFAULT}), as timm does')
    p.add_argument('--torchcompile-mode', default=None,
                   help='inductor mode: default, reduce-overhead, max-autotune, ...')
    p.add_argument('--no-progress', action='store_true', help="hide each stage's progress and ETA (shown on stderr)")
    p.set_defaults(func=run, interrupted=_interrupted)


def _interrupted(args: argparse.Namespace) -> str:
    if args.json is None:
        return 'nothing was kept (with --json, finished batches are kept and --resume continues from them)'
    return f'finished batches are kept in {args.json}{SIDECAR_SUFFIX}; rerun with --resume to continue'



def _check_json_target(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace a finished result, or to throw away a killed run's batches, unless told to."""
    sidecar = Path(str(out) + SIDECAR_SUFFIX)
    if resume and overwrite:
        raise UserError('--resume and --overwrite contradict each other; pick one')
    if out.is_dir():
        raise UserError(f'--json {out} is a directory; give a file name such as {out / "eval.json"}')
    if out.exists() and not overwrite:
        raise UserError(f'--json {out} already holds a result; pass --overwrite to replace it, or choose another file')
    if sidecar.exists() and not (resume or overwrite):
        raise UserError(f'{sidecar} holds a partial evaluation; pass --resume to continue it, or --overwrite to '
                        'start afresh')


def run(args: argparse.Namespace) -> int:
    # validate every cheap input before any expensive work (and before torch is imported)
    eps = parse_eps(args.eps, args.norm)
    names = resolve_attacks(args.attacks)
    if args.dataset is not None:
        check_dataset_name(args.dataset)
    if args.pretrained and args.checkpoint:
        raise UserError('--pretrained and --checkpoint both name the weights; give one')
    if args.batch_size < 1:
        raise UserError(f'--batch-size {args.batch_size} must be at least 1')
    if args.n_examples < 1:
        raise UserError(f'--n-examples {args.n_examples} must be at least 1')
    for flag, value in (('--num-classes', args.num_classes), ('--in-chans', args.in_chans),
                        ('--img-size', args.img_size)):
        if value is not None and value < 1:
            raise UserError(f'{flag} {value} must be at least 1 (default: the data set\'s)')
    if args.n_check < 1:
        raise UserError(f'--n-check {args.n_check} must be at least 1 (the sanity checks attack that many examples)')
    if args.per_layer_expert and args.no_per_expert:
        raise UserError('--per-layer-expert and --no-per-expert contradict each other: the per-layer subpaths are '
                        'part of the per-expert analysis')
    if args.resume and args.json is None:
        raise UserError('--resume needs --json: partial results live next to the JSON output')
    if args.json is not None:
        _check_json_target(args.json, args.resume, args.overwrite)
    given = parse_mapping('--model-kwargs', args.model_kwargs) if args.model_kwargs else {}
    convert = parse_mapping('--convert', args.convert) if args.convert else None
    # these import timm and torch, so only once every cheap input is checked; a wrong model is said before any
    # default is announced
    from bench.checkpoints import check_run_model, default_dataset, run_config_value
    from bench.models import check_convert, check_model_name
    check_model_name(args.model)
    check_run_model(args.checkpoint, args.model)
    # a run's conversion is part of its model: routing k changes no weight, so only the run config can tell
    trained = run_config_value(args.checkpoint, 'convert')
    if convert is None:
        convert = trained
    elif trained is not None and check_convert(convert).to_dict() != check_convert(trained, 'convert').to_dict():
        raise UserError(f'--checkpoint {args.checkpoint} was trained with convert {trained} (its config.yaml), not '
                        f'--convert {args.convert}; leave --convert out')
    check_convert(convert)
    img_size = args.img_size or run_config_value(args.checkpoint, 'img_size')
    if args.dataset is None:  # the weights know what they were trained on: never send the user to CIFAR-100
        args.dataset, why = default_dataset(args.checkpoint, args.model if args.pretrained else None)
        print(f'--dataset not given: {args.dataset} ({why})')
    check_torchcompile(args.torchcompile, args.torchcompile_mode)  # imports torch only to check a backend

    import timm
    import torch

    from bench.core.compile import compiled_in_place
    from bench.core.devices import choose_device
    from bench.data import dataset_info, eval_tensors
    from bench.evaluation.loop import evaluate_model
    from bench.evaluation.resume import BatchLog
    from bench.checkpoints import run_config_kwargs
    from bench.models import build_model, check_input_size, normalized
    device = choose_device(args.device)
    info = dataset_info(args.dataset)
    kwargs = {**run_config_kwargs(args.checkpoint), **given}
    num_classes = args.num_classes or kwargs.pop('num_classes', None) or info['num_classes']
    in_chans = args.in_chans or kwargs.pop('in_chans', None) or info['in_chans']
    if in_chans != info['in_chans']:
        raise UserError(f'--in-chans {in_chans} does not fit {args.dataset}, whose images have {info["in_chans"]}')
    model = build_model(args.model, num_classes, in_chans, kwargs, args.checkpoint, pretrained=args.pretrained,
                        convert=convert)
    check_input_size(model, in_chans, img_size or info['input_size'][-1], args.model,
                     '--img-size {need} resizes them inside the model')
    x, y = eval_tensors(args.dataset, args.n_examples, args.data_dir, args.download)
    wrapped = normalized(model, info['mean'], info['std'], img_size).to(device)
    sidecar = Path(str(args.json) + SIDECAR_SUFFIX) if args.json else None
    with compiled_in_place(wrapped, args.torchcompile, args.torchcompile_mode):
        result = evaluate_model(wrapped, x, y, attacks=names, eps=eps, norm=args.norm, batch_size=args.batch_size,
                                per_expert=not args.no_per_expert, per_layer_expert=args.per_layer_expert,
                                seed=args.seed, sidecar=sidecar,
                                resume=args.resume, progress=not args.no_progress, n_check=args.n_check,
                                sanity_checks=not args.no_checks)
    result.settings.update(model=args.model, model_kwargs=dict(kwargs, num_classes=num_classes, in_chans=in_chans),

                              checkpoint=str(args.checkpoint) if args.checkpoint else None, dataset=args.dataset,
                              device=str(device), torch=torch.__version__, timm=timm.__version__,
                              torchcompile=args.torchcompile, torchcompile_mode=args.torchcompile_mode)
    # only where given, so that the settings of every other evaluation read as before
    result.settings.update({key: value for key, value in (('convert', getattr(model, 'moe_conversion', None)),
                                                          ('img_size', img_size)) if value is not None})
    print_result(result)
    if args.json:
        write_json_atomic(result.to_json(), args.json)
        BatchLog.discard(sidecar)  # complete: nothing left to resume
        print(f'wrote {args.json}')
    return 0


def print_result(result: EvalResult) -> None:
    """Accuracy table, MoE tables and the sanity-check table, with rich."""
    from rich.console import Console
    from rich.table import Table

    from bench.evaluation import checks as sanity
    console = Console()
    n = result.n_examples
    table = Table(title=f'{result.threat_model} eps={result.eps:.5g} on {n} examples')
    for col in ('attack', 'accuracy %', 'correct', 'seconds'):
        table.add_column(col, justify='left' if col == 'attack' else 'right')
    table.add_row('clean', f'{result.clean_acc:.2f}', f'{result.counts["clean"]}/{n}', '')
    for k, v in result.robust_acc.items():
        secs = result.timing.get(k)
        table.add_row(f'[bold]{k}' if k == 'worst_case' else k, f'{v:.2f}', f'{result.counts[k]}/{n}',
                      f'{secs:.1f}' if secs is not None else '')
    console.print(table)
    if result.per_expert:
        t = Table(title='Per-expert subpaths (accuracy %)')
        names = list(result.per_expert[0]['robust_acc'])
        for col in ['expert', 'clean', *names]:
            t.add_column(col, justify='right')
        for row in result.per_expert:
            t.add_row(str(row['expert']), f'{row["clean_acc"]:.2f}', *(f'{row["robust_acc"][k]:.2f}' for k in names))
        console.print(t)
        if result.per_layer_expert:
            t = Table(title='Per-layer subpaths: expert e forced in one MoE layer, the others routing (accuracy %)')
            for col in ['layer', 'expert', 'clean', *names]:
                t.add_column(col, justify='left' if col == 'layer' else 'right')
            for row in result.per_layer_expert:
                t.add_row(row['layer'], str(row['expert']), f'{row["clean_acc"]:.2f}',
                          *(f'{row["robust_acc"][k]:.2f}' for k in names))
            console.print(t)
        r = result.routing_under_attack
        changed = 'n/a' if r['changed_fraction'] is None else f'{100 * r["changed_fraction"]:.1f}%'
        console.print(f'routing under {r["attack"]}: {changed} of the {r["attacked_points"]} attacked images change '
                      f'experts; load clean {[round(v, 3) for v in r["load_clean"]]} -> adversarial '
                      f'{[round(v, 3) for v in r["load_adv"]]}')
    sanity.print_checks(result.sanity, console)
    for label, parts in result.autoattack_attacks_run.items():
        console.print(f'{label} ran {"+".join(parts)}')
    for label, messages in result.attack_warnings.items():
        for m in messages:
            console.print(f'[yellow]{label}: pyautoattack warned: {m}')
    if result.flags:
        console.print(f'[bold red]flags: {", ".join(result.flags)}')
