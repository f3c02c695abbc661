"""`timm-moe report`: PNG plots drawn from the registry (see `bench.results.report` for what each shows); with
`--study SPEC`, the study report of a grid spec (`DIR/STUDY.md` and `DIR/study/*.png`, see `bench.results.study`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from bench.cli.options import add_registry_args
from bench.core.errors import UserError
from bench.core.values import check_out_apart
from bench.results.registry import check_filters, default_registry, default_text, load_entries
from bench.results.report import write_report


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('report', help='draw PNG plots from the registry (or a study report: --study)',
                              description='PNG plots drawn from the registry (never from numbers typed anywhere '
                                          'else); with --study, the study report STUDY.md and its plots.')
    add_registry_args(p)
    # None: the default registry, or with --study the spec's own registry when it exists
    p.set_defaults(registry=None)
    p.add_argument('--out', required=True, type=Path, help='directory for the PNG files (created if missing)')
    p.add_argument('--study', metavar='SPEC',
                   help='write OUT/STUDY.md and OUT/study/*.png from the entries of this grid spec (a YAML path '
                        'or a shipped name such as study_fashion_mnist); registry: --registry, else the spec\'s own '
                        '(its registry: key, else registry/ in its out: folder) when that folder exists, else '
                        f'{default_text()}')
    p.set_defaults(func=run)


def study_plan(spec: Any) -> Dict[str, Any]:
    """The spec as the plain data `bench.results.study` takes (the results layer does not read specs)."""
    from bench.pipeline.named_cells import config_seeds

    if not spec.configs:
        raise UserError(f'grid spec {spec.name!r} has no named configs (configs: ...): a study report compares '
                        'named configurations; use plain `timm-moe report` for other grids')
    from bench.dataset_table import DATASET_SIZES, check_dataset_name

    dataset = spec.train.get('dataset')
    extra = {} if spec.superseded_by is None else {'superseded_by': _superseding(spec)}
    return {**extra, 'name': spec.name, 'seeds': list(spec.seeds or []), 'preregistration': spec.preregistration,
            'claims': spec.claims,
            # the size of the training split, for the sizing table when the recipe sets no train_limit
            'train_images': DATASET_SIZES[check_dataset_name(dataset)]['train_images'] if dataset else None,
            'configs': {name: {'model': c['model'], 'training': c.get('training', 'pgd'),
                               'seeds': [s for s in config_seeds(c, spec.seeds) if s is not None],
                               'upcycle_from': c.get('upcycle_from')} for name, c in spec.configs.items()}}


def _superseding(spec: Any) -> Dict[str, Any]:
    """The study that supersedes `spec`, as the report names it: its name, the follow-ups `spec` planned, and the
    first seed of each of its configs that ships as a pretrained tag, with the attack settings of `spec`'s
    AutoAttack follow-ups (points) and of the later study (radius), so that the report can give the commands."""
    from bench.pipeline.grid import load_spec
    from bench.pipeline.named_cells import config_seeds

    later = load_spec(spec.superseded_by)
    block = spec.autoattack or {}
    return {'name': later.name, 'autoattack_configs': list(block.get('configs') or []),
            'n_examples': block.get('n_examples', spec.eval.get('n_examples', 1000)),
            'eps': later.eval.get('eps', 8 / 255), 'preregistered': later.preregistration is not None,
            'seeds_per_arm': min(len(config_seeds(c, later.seeds)) for c in later.configs.values()),
            'first_seeds': [{'config': name, 'model': c['model'], 'tag': c['tag'],
                             'seed': config_seeds(c, later.seeds)[0]}
                            for name, c in later.configs.items() if c.get('tag')]}


def run(args: argparse.Namespace) -> int:
    check_filters(args.dataset, args.threat_model)
    if args.study is None:
        registry = Path(args.registry or default_registry())
        check_out_apart(args.out, {'the registry': registry})
        for path in write_report(registry, args.out, args.dataset, args.threat_model):
            print(f'wrote {path}')
        return 0
    from bench.pipeline.grid import load_spec, registry_dir
    from bench.results.study import write_study

    spec = load_spec(args.study)
    registry = Path(args.registry) if args.registry else registry_dir(spec)
    if not args.registry and not registry.is_dir():
        # the study was not run here: report on the results that came with timm-moe (or the user's default)
        print(f'{registry} does not exist: reading {default_registry()}')
        registry = default_registry()
    check_out_apart(args.out, {'the registry': registry})
    entries = load_entries(registry, dataset=args.dataset, threat_model=args.threat_model)
    for path in write_study(entries, study_plan(spec), args.out):
        print(f'wrote {path}')
    return 0
