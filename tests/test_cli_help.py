"""`timm-moe VERB --help` says what every option does and its default."""
from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from bench.cli import build_parser
from bench.cli.parser import Parser
from bench.training.config import TrainConfig, field_help


def _verb_parsers():
    return build_parser(full=True).verbs  # a bare build lists the verbs only, without their options


def help_problems(actions):
    """(options without help, options whose help does not state their default)."""
    missing, no_default = [], []
    for action in actions:
        if '--help' in action.option_strings or action.help == argparse.SUPPRESS:  # hidden: nothing to say
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        text = action.help or ''
        if not text.strip():
            missing.append(name)
        elif action.option_strings and action.default not in (None, False) and 'default' not in text:
            no_default.append(name)
    return missing, no_default


def unlisted(parser: Parser):
    """Options that the usage line shows and `parser.arguments` lacks: added past `Parser.add_argument`, so that
    neither the checks here nor the suggestion for a mistyped option would see them."""
    # past the program's name: a parser with no prog takes it from sys.argv[0], which is '-c' in a pytest-xdist worker
    usage = parser.format_usage().split(parser.prog, 1)[1]
    shown = set(re.findall(r'(?<![\w-])(--?[a-zA-Z][\w-]*)', usage))
    return sorted(shown - {s for a in parser.arguments for s in a.option_strings})


@pytest.mark.parametrize('verb', list(_verb_parsers()))
def test_every_option_says_what_it_does_and_its_default(verb):
    parser = _verb_parsers()[verb]
    missing, no_default = help_problems(parser.arguments)
    assert not missing, f'timm-moe {verb}: options without help: {", ".join(missing)}'
    assert not no_default, f'timm-moe {verb}: options whose help does not state the default: {", ".join(no_default)}'
    parser.format_help()  # every help string formats (a stray % would raise here)
    assert not unlisted(parser), f'timm-moe {verb}: options not kept by its parser: {", ".join(unlisted(parser))}'


def test_train_options_state_the_configs_defaults():
    # a bool's --no-<name> shares its dest and stays out of the help
    helps = {a.dest: a.help for a in _verb_parsers()['train'].arguments if a.help != argparse.SUPPRESS}
    for f in dataclasses.fields(TrainConfig):
        assert '(default: ' in helps[f'cfg_{f.name}'], f.name
    assert helps['cfg_eps'].startswith(field_help()['eps']) and '(default: 8/255)' in helps['cfg_eps']
    assert '(default: false); a bare flag means true, --no-amp false' in helps['cfg_amp']


def test_the_checks_fire():
    bare = argparse.ArgumentParser()
    assert help_problems([bare.add_argument('--x', default=3, help='x'), bare.add_argument('--y')]) == (['--y'], ['--x'])
    ours = Parser()
    ours.add_argument('--x', default=3, help='x')
    ours.add_argument('--hidden', default=4, help=argparse.SUPPRESS)
    ours.add_mutually_exclusive_group().add_argument('--z', default='a', help='z')
    assert help_problems(ours.arguments) == ([], []) and unlisted(ours) == []
    assert 'x (default: 3)' in ours.format_help() and 'z (default: a)' in ours.format_help()
    assert '--hidden' not in ours.format_help()
    ours.add_argument_group('past the parser').add_argument('--w')
    assert unlisted(ours) == ['--w']
    assert set(field_help()) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert not [name for name, text in field_help().items() if not text.strip()], 'config keys without a description'


def test_the_config_descriptions_need_no_source_file(monkeypatch):
    # an installation of bytecode only (.pyc) has no source for inspect to read: --help must still describe each key
    import inspect

    def no_source(obj):
        raise OSError('could not get source code')
    monkeypatch.setattr(inspect, 'getsource', no_source)
    monkeypatch.setattr(inspect, 'getsourcelines', no_source)
    assert field_help()['eps'] == "L-inf radius in [0, 1] pixels; accepts '8/255'"
