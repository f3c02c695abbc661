"""A paper's claims are data (`bench.results.study.claims`): the study code names no row of the paper's table, and a
second paper's claims file, with its own table and columns, drives the same report."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bench.core.errors import UserError
from bench.pipeline.grid import load_spec
from bench.results.study import analysis as an
from bench.results.study import claims, report_text
from bench.results.study.analysis import collect
from bench.results.study.render import SUMMARY_END, SUMMARY_START
from test_study_report import make_entries, plan

STUDY_CODE = Path(an.__file__).parent
# the rows and columns of the shipped paper's table, as its claims file names them
PAPER_ROWS = re.compile(r'BlockMoE replacing|ConvMoEs replacing|conv5_x|L_switch|L_column_entropy|GAP-FC|Conv-GAP|L_ent')


def test_the_study_code_names_no_row_of_the_papers_table():
    code = sorted(p for p in STUDY_CODE.rglob('*') if p.is_file() and p.suffix in ('.py', '.j2'))
    assert any(p.suffix == '.py' for p in code)
    named = [f'{p.relative_to(STUDY_CODE)}:{i}: {line.strip()}' for p in code
             for i, line in enumerate(p.read_text(encoding='utf-8').splitlines(), 1) if PAPER_ROWS.search(line)]
    assert named == []
    # the pattern does find the rows, where they live: in the paper's claims file
    assert len(PAPER_ROWS.findall(claims.DEFAULT_CLAIMS.read_text(encoding='utf-8'))) > 10


TOY_TABLE = """model,recipe,split,acc_pgd,acc_aa
dense,at,test,40.0,38.0
moe,at,test,45.0,41.0
moe_k2,at,test,43.0,42.0
dense,trades,test,42.0,40.0
moe,trades,test,44.0,39.0
moe_k2,trades,test,46.0,41.0
moe,at,train,99.0,99.0
"""
TOY_CLAIMS = {
    'table': 'toy.csv', 'source': 'the toy paper\'s table', 'setting': 'toy data',
    'rows': {'split': 'test'}, 'keys': ['model', 'recipe'], 'metrics': {'acc_pgd': 'PGD', 'acc_aa': 'AA'},
    'baseline': {'same': ['recipe'], 'where': {'model': 'dense'}},
    'sets': {'at': {'recipe': 'at'}},
    'claims': [
        {'title': 'MoEs beat dense at equal cost', 'claim': 'a MoE beats dense',
         'effect': '{moe} at AT', 'detail': 'ahead of dense in {rows}',
         'values': {'moe': {'delta': {'a': {'in': 'at', 'model': 'moe'}, 'b': {'in': 'at', 'model': 'dense'}}},
                    'rows': {'ahead': {'a': {'model': 'moe'}, 'vary': {'model': 'dense'}, 'what': 'recipes'}}},
         'test': {'pairs': 'equal_flops'}},
        {'title': 'one expert beats two', 'claim': 'k=1 beats k=2', 'effect': 'most robust in {best}',
         'values': {'best': {'best': {'rows': {}, 'over': 'model', 'value': 'moe'}},
                    'fixed': {'ahead': {'a': {'model': 'moe_k2'}, 'b': {'in': 'at', 'model': 'dense'}}}},
         'test': {'pairs': 'differ_in', 'field': 'k', 'also': ['expert_width'], 'better': 'smaller',
                  'label': '{a} vs {b} (k {va} against {vb}; {flops})', 'how': 'Pairs: the toy k pairs.',
                  'none': 'no toy k pair.'}},
        {'title': 'the switch loss collapses', 'claim': 'switch collapses', 'effect': '– (no routing in the toy)',
         'test': {'collapse': 'aux_loss', 'value': 'switch', 'also': ['aux_weight', 'noisy_gating']}},
    ]}


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    (tmp_path / 'toy.csv').write_text(TOY_TABLE, encoding='utf-8')
    path = tmp_path / 'toy_claims.yaml'
    path.write_text(yaml.safe_dump(TOY_CLAIMS, allow_unicode=True, sort_keys=False), encoding='utf-8')
    return path


def test_a_second_papers_claims_file_drives_the_same_report(toy):
    known = claims.load_claims(toy)
    rows = claims.table_rows(known)
    assert len(rows) == 6  # the `rows` filter leaves the train split out
    assert [e['effect'] for e in claims.effects(known, rows)] == [
        '+5.00 / +3.00 at AT', 'most robust in 1 of 2 on PGD and 0 of 2 on AA', '– (no routing in the toy)']
    assert claims.effects(known, rows)[0]['detail'] == 'ahead of dense in 2 of 2 recipes on PGD and 1 of 2 on AA'

    study = collect(make_entries(), {**plan(), 'claims': str(toy)})
    text = report_text(study)
    assert "**The paper's table** (the toy paper's table): a MoE beats dense. Effect: +5.00 / +3.00 at AT; ahead of " \
           'dense in 2 of 2 recipes on PGD and 1 of 2 on AA.' in text
    assert '## Claim 1: MoEs beat dense at equal cost' in text and '## Claim 3: the switch loss collapses' in text
    assert '## Claim 4' not in text and 'claims 1-3,' in text
    assert 'Pairs: the toy k pairs.' in text and 'e4k1 vs e4k2 (k 1 against 2; FLOPs differ: FLOPs 1.00 vs 1.31)' in text
    assert 'switch (switch) vs e4k1 (entropy)' in text and 'Expert subpaths (claim 3;' in text
    summary = text.split(SUMMARY_START)[1].split(SUMMARY_END)[0]
    assert "the paper's effect (PGD / AA)" in summary and '| 2. k=1 beats k=2 | most robust in 1 of 2' in summary
    assert not PAPER_ROWS.search(text) and 'CIFAR-100' not in text  # nothing of the shipped paper is left
    # a pre-registration's `paper:` row is named by the toy's key columns, against the same recipe's dense row
    assert an.paper_delta(study, {'model': 'moe', 'recipe': 'trades'}) == (2.0, -1.0)
    assert an.check_preregistration({'baseline': 'dense', 'primary': {'e4k1': {'paper': {'model': 'moe'}}}},
                                    study.plan['configs'], 'spec', known.keys)['primary']['e4k1']['paper']
    with pytest.raises(UserError, match=r"primary.e4k1.paper in spec is \{'table': 'x'\}: keys model, recipe"):
        an.check_preregistration({'baseline': 'dense', 'primary': {'e4k1': {'paper': {'table': 'x'}}}},
                                 study.plan['configs'], 'spec', known.keys)


def test_a_study_spec_names_its_claims_file(toy, tmp_path):
    """`claims:` in a spec picks the file whose key columns its pre-registered `paper:` rows must use: the powered
    study's rows of the shipped table are not rows of the toy's."""
    spec = yaml.safe_load((Path(an.__file__).parents[2] / 'configs' / 'study_powered_fashion_mnist.yaml')
                          .read_text(encoding='utf-8'))
    assert load_spec(Path(an.__file__).parents[2] / 'configs' / 'study_powered_fashion_mnist.yaml').claims is None
    path = tmp_path / 'study_toy.yaml'
    path.write_text(yaml.safe_dump({**spec, 'claims': str(toy)}, sort_keys=False), encoding='utf-8')
    with pytest.raises(UserError, match=r'preregistration.primary.convmoe_all.paper .* keys model, recipe of a row'):
        load_spec(path)
    path.write_text(yaml.safe_dump({**spec, 'claims': str(tmp_path / 'none.yaml')}), encoding='utf-8')
    with pytest.raises(UserError, match=r"claims file '.*none.yaml' does not exist: .*robust_experts_claims"):
        load_spec(path)


def _broken(claim: dict = None, **top) -> dict:
    return {**TOY_CLAIMS, **top, 'claims': [{**TOY_CLAIMS['claims'][0], **(claim or {})}]}


@pytest.mark.parametrize('data, message', [
    (_broken(tables='x'), "unknown key 'tables' in claims file"),
    (_broken(keys='model'), 'keys in claims file .* is \'model\': give the list of columns'),
    (_broken({'effect': '{nothing} at AT'}), r"claims\[1\] in claims file .* is '\{nothing\}': name one of its values"),
    (_broken({'values': {'moe': {'delta': {'a': {'in': 'nope'}, 'b': {}}}}}),
     r"claims\[1\].values.moe.delta.a.in .* is 'nope': name sets of the file \(at\)"),
    (_broken({'values': {'moe': {'ratio': {}}}}), 'give one operation, delta or ahead or best'),
    (_broken({'values': {'moe': {'ahead': {'a': {}}}}}), 'give rows a, and either a row b or vary'),
    (_broken({'test': {'pairs': 'anything'}}), r"claims\[1\].test .* is \{'pairs': 'anything'\}"),
    (_broken({'test': {'pairs': 'differ_in', 'field': 'k'}}), r"claims\[1\].test.better .* is None: give text"),
    (_broken(baseline={'same': ['split']}), 'baseline in claims file'),
])
def test_a_bad_claims_file_is_refused_in_one_line(tmp_path, data, message):
    path = tmp_path / 'claims.yaml'
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding='utf-8')
    with pytest.raises(UserError, match=message) as err:
        claims.load_claims(path)
    assert '\n' not in str(err.value)


def test_a_table_without_a_named_column_is_refused(toy):
    toy.with_name('toy.csv').write_text(TOY_TABLE.replace('acc_aa', 'aa'), encoding='utf-8')
    with pytest.raises(UserError, match="lacks column 'acc_aa', which toy_claims.yaml names"):
        claims.table_rows(claims.load_claims(toy))
