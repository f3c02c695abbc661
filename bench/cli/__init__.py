"""`timm-moe` command line: a thin dispatcher over the verb modules (one per verb, `bench/cli/<verb>.py`).

Each verb module exposes `add_cli(verbs)`, which adds its parser with `verbs.add_parser` (`bench.cli.parser`)
and sets `func=run` on it, where `run(args) -> int` returns the exit code.
"""
from __future__ import annotations

import codecs
import importlib
import os
import sys
import traceback
from typing import List, Optional

from bench.cli.parser import Parser, Verbs
from bench.core.errors import UserError, is_user_os_error
from bench.core.threads import set_openmp_defaults

# Errors that are the user's to fix: a bad value (UserError) or a path that cannot be used. They print as one
# line with exit status 2. Any other exception, a plain ValueError included, is a bug in timm-moe: it keeps its
# traceback and exits 1, so that it is never mistaken for bad input.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
# The plugin's errors about a file of the user's (it imports no bench, so it cannot raise UserError), by name: their
# module imports torch, which the CLI does not import to answer --help. A manifest is read when timm_moe is imported.
PLUGIN_USER_ERRORS = ('timm_moe.models.pretrained.ManifestError',)

# verb -> (module that implements it, its line in `timm-moe --help`). A module is imported only when its verb
# runs (or shows its own --help): `timm-moe --help` and a mistyped verb import none, so neither waits for torch.
VERBS = {
    'quickstart': ('bench.cli.quickstart', 'train, attack, audit and rank small dense and BlockMoE models on the '
                                           'bundled data (CPU, offline, a few minutes)'),
    'train': ('bench.cli.train', 'train a model (normal, or PGD, TRADES, Fast or Free adversarial training)'),
    'eval': ('bench.cli.eval', 'clean and robust accuracy (PGD, APGD, AutoAttack) with sanity checks'),
    'audit': ('bench.cli.audit', 'FLOPs (fvcore), parameters, latency and memory of models over their dense '
                                 'baselines'),
    'leaderboard': ('bench.cli.leaderboard', 'rank the registry and regenerate registry/LEADERBOARD.md'),
    'grid': ('bench.cli.grid', 'run a sweep from a YAML spec: train, attack, audit, register each cell'),
    'report': ('bench.cli.report', 'draw PNG plots from the registry (or a study report: --study)'),
    'models': ('bench.cli.models', 'list every registered model (experts, parameters) and the pretrained tags'),
    'export': ('bench.cli.export', 'a hub-style folder (config.json, model.safetensors, model card) from a '
                                   'training run'),
    'compare': ('bench.cli.compare', 'paired comparison of two registry entries on their shared test points'),
    'import-paper': ('bench.cli.import_paper', "rebuild the registry's paper and RobustBench entries"),
    'ship': ('bench.cli.ship', "a finished study's tagged configs as timm pretrained tags"),
}


def build_parser(verb: Optional[str] = None, full: bool = False) -> Parser:
    """The CLI's parser, with the full options of `verb` (or of every verb if `full`: slow, it imports them all)."""
    parser = Parser(prog='timm-moe', description='BlockMoE ResNets for timm: train, attack, audit, rank.')
    verbs = Verbs(parser, dest='verb')
    for name, (module, summary) in VERBS.items():
        if full or name == verb:
            importlib.import_module(module).add_cli(verbs)
        else:  # listed in --help without importing its module
            verbs.add_parser(name, help=summary)
    return parser


# The exit status of a command whose reader went away (`timm-moe leaderboard | head -1`): what a shell shows for
# git or ls, which SIGPIPE ends (128 + 13). Nothing is printed: a closed pipe is the reader's choice, not an error.
EXIT_CLOSED_PIPE = 141


def main(argv: Optional[List[str]] = None) -> int:
    # before any verb imports torch: how its OpenMP threads wait (a spinning wait collapses beside a busy process)
    set_openmp_defaults()
    _usable_std_streams()
    try:
        code = _main(argv)
        sys.stdout.flush()  # output that fit in the buffer meets a closed pipe only here
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except SystemExit as e:  # rich meets a closed pipe with SystemExit(1), raised while handling BrokenPipeError
        if isinstance(e.__context__, BrokenPipeError):
            return _closed_pipe()
        raise


def _closed_pipe() -> int:
    """The exit status for a reader that went away; the rest of the output is dropped quietly."""
    # stdout points at /dev/null from here on, so that the interpreter's own flush at exit does not fail again
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # a stream without a descriptor (a test's capture): nothing to flush at exit
        return EXIT_CLOSED_PIPE
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return EXIT_CLOSED_PIPE


def _usable_std_streams() -> None:
    """Standard streams that every verb can write to, whatever the user's shell or locale handed over.

    - A closed stdin, stdout or stderr (`>&-`) gets /dev/null on its descriptor: Python gives None for it (every
      print and isatty() would fail), and the next file opened would take descriptor 1 or 2, so a stray write
      to stdout could land in a checkpoint. What would have been printed is dropped, as the user asked.
    - An encoding that cannot write every character (PYTHONIOENCODING=ascii, a Latin-1 locale) replaces the ones
      it lacks (`·` becomes `?`) instead of failing; rich then draws its tables in ASCII.
    """
    for fd, name, mode in ((0, 'stdin', 'r'), (1, 'stdout', 'w'), (2, 'stderr', 'w')):
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - lives as long as the process
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, 'encoding', None) or 'utf-8'
        if codecs.lookup(encoding).name != 'utf-8' and hasattr(stream, 'reconfigure'):
            stream.reconfigure(errors='replace')


def _main(argv: Optional[List[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith('-')), None)
    parser = build_parser(verb if verb in VERBS else None)
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f'timm-moe {args.verb}: error: {_one_line(e)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one Ctrl-C: the verb has stopped its workers; say what is kept, in one line
        hint = getattr(args, 'interrupted', None)
        print(f'timm-moe {args.verb}: interrupted' + (f'; {hint(args)}' if hint else ''), file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away: `main` exits quietly
        raise
    except Exception as e:  # noqa: BLE001 - a bug: show where it happened, and say it is not the user's input
        if is_user_os_error(e) or f'{type(e).__module__}.{type(e).__qualname__}' in PLUGIN_USER_ERRORS:
            # the user's file system refuses (read-only, full), or a plugin's file is unusable: bad input, not a bug
            print(f'timm-moe {args.verb}: error: {_one_line(e)}', file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f'timm-moe {args.verb}: internal error (a bug in timm-moe, not bad input): please report the '
              'traceback above', file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    """The first line of the message; for an OSError without one, the error and the path."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

