"""The leaderboard: rank the registry's entries and regenerate `registry/LEADERBOARD.md`.

Each accuracy column holds exactly one attack configuration (attack, implementation, steps, restarts,
random start, loss, step size; for AutoAttack the parts that ran), read from the settings an entry stores
(`eval_settings`) or, for entries without them, from what its accuracy key meant (`KEY_SETTINGS`). PGD-10
and PGD-20 are two columns; so are our APGD-CE-20 and the paper code's APGD-20.

A table ranks the rows measured with one configuration (`--sort`); the rows without it are listed apart
("not measured with ..."), never ranked below as if they had scored nothing. Runs that differ only in their
training seed are one row: mean, std over seeds and a 95% t-interval over the seeds (`--no-group` lists the
runs). An accuracy from fewer than 10,000 test points carries its 95% Wilson interval.

The printed tables show what was asked (--dataset, --threat-model, --sort, --limit). The file is the
canonical view: every entry, grouped by seed, each section ranked by its default configuration (`auto`), so
that its content depends only on the entries, never on the flags of whoever ran the command last. It has
no timestamp and a total order, so regenerating it from the same entries gives the same bytes.
"""
from bench.results.leaderboard.columns import (AUTO, CLEAN, DAGGER, DASH, DEFAULT_SORT, WORST_CASE, EXACT_N, FILENAME,
                                               KEY_SETTINGS, Column, attack_config, columns_of, config_label,
                                               describe, entry_attack_settings, entry_columns, legacy_settings)
from bench.results.leaderboard.groups import (Cell, Row, Section, fmt_eps, make_rows, rank_rows, resolve_sort,
                                              sections)
from bench.results.leaderboard.render import (check_sort, fmt_cell, header, moe_config_label, noisy_gating,
                                              print_table, render_markdown, row_cells, write_leaderboard)

__all__ = ['AUTO', 'CLEAN', 'DAGGER', 'DASH', 'DEFAULT_SORT', 'WORST_CASE', 'EXACT_N', 'FILENAME', 'KEY_SETTINGS',
           'Cell', 'Column', 'Row', 'Section', 'attack_config', 'check_sort', 'columns_of', 'config_label', 'describe',
           'entry_attack_settings', 'entry_columns', 'fmt_cell', 'fmt_eps', 'header', 'legacy_settings', 'make_rows',
           'moe_config_label', 'noisy_gating', 'print_table', 'rank_rows', 'render_markdown', 'resolve_sort',
           'row_cells', 'sections', 'write_leaderboard']
