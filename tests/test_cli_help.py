"""`timm-moe VERB --help` says what every option does and its default."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from bench.cli import _HelpFormatter, build_parser
from bench.training.config import TrainConfig, field_help


def _verb_parsers():
    parser = build_parser(full=True)  # a bare build lists the verbs only, without their options
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def help_problems(parser: argparse.ArgumentParser):
    """(options without help, options whose formatted help does not state their default)."""
    formatter = parser._get_formatter()
    missing, no_default = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        text = formatter._get_help_string(action) if action.help else ''
        if not text.strip():
            missing.append(name)
        elif action.option_strings and action.default not in (None, False) and 'default' not in text:
            no_default.append(name)
    return missing, no_default


@pytest.mark.parametrize('verb', list(_verb_parsers()))
def test_every_option_says_what_it_does_and_its_default(verb):
    parser = _verb_parsers()[verb]
    missing, no_default = help_problems(parser)
    assert not missing, f'timm-moe {verb}: options without help: {", ".join(missing)}'
    assert not no_default, f'timm-moe {verb}: options whose help does not state the default: {", ".join(no_default)}'
    parser.format_help()  # every help string formats (a stray % would raise here)


def test_train_options_state_the_configs_defaults():
    # a bool's --no-<name> shares its dest and stays out of the help
    helps = {a.dest: a.help for a in _verb_parsers()['train']._actions if a.help != argparse.SUPPRESS}
    for f in dataclasses.fields(TrainConfig):
        assert '(default: ' in helps[f'cfg_{f.name}'], f.name
    assert helps['cfg_eps'].startswith(field_help()['eps']) and '(default: 8/255)' in helps['cfg_eps']
    assert '(default: false); a bare flag means true, --no-amp false' in helps['cfg_amp']


def test_the_checks_fire():
    bare = argparse.ArgumentParser()
    bare.add_argument('--x', default=3, help='x')
    bare.add_argument('--y')
    assert help_problems(bare) == (['--y'], ['--x'])
    ours = argparse.ArgumentParser(formatter_class=_HelpFormatter)
    ours.add_argument('--x', default=3, help='x')
    assert help_problems(ours) == ([], []) and 'x (default: 3)' in ours.format_help()
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
