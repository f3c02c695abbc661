"""A follow-up evaluation whose source cell's run folder is gone evaluates the pretrained tag shipped from that
run (`bench.pipeline.shipped_weights`), found by its registry entry and checked by the manifest's sha256."""
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from bench.core.errors import UserError
from bench.core.provenance import sha256_file
from bench.models import build_model
from bench.pipeline.followup import followup_cells
from bench.pipeline.grid import cells, load_spec, registry_dir, run_dir, run_grid, run_grid_cell
from bench.pipeline.shipped_weights import shipped_run
from bench.results.registry import load_entries, write_entry
from registry_fakes import make_entry

FIXTURE = Path(__file__).parent / 'fixtures' / 'study_tiny.yaml'
ENTRY = 'resnet18_dense-pgd-fmnist-bundled-tag001'
KEY = 'resnet18_dense.tiny_pgd'


def _spec(tmp_path: Path):
    data = yaml.safe_load(FIXTURE.read_text())
    data.update(out=str(tmp_path / 'study'), autoattack={'n_examples': 4, 'configs': ['dense'], 'attacks': 'apgd-ce10'})
    path = tmp_path / 'study_tiny.yaml'
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path)


def _ship(folder: Path, entry_id: str = ENTRY) -> Path:
    """A tag of resnet18_dense at width 4 in float16, as `timm-moe ship` writes it, made from run `entry_id`."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model('resnet18_dense', 10, 1, {'width': 4})
    file = folder / f'{KEY}.safetensors'
    save_file({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, file)
    record = dict(file=file.name, sha256=sha256_file(file), dtype='float16', input_size=[1, 28, 28], mean=[0.286],
                  std=[0.353], model_kwargs={'num_classes': 10, 'in_chans': 1, 'width': 4},
                  dataset='fashion-mnist-bundled', entry_id=entry_id, spec='study_tiny')
    (folder / 'manifest.json').write_text(json.dumps({KEY: record}))
    return file


@pytest.fixture
def study(tmp_path, monkeypatch):
    """The tiny study with dense-seed0's entry committed, its run folder gone, and a tag shipped from its run."""
    monkeypatch.setenv('TIMM_MOE_PRETRAINED_DIR', str(tmp_path / 'tags'))
    spec = _spec(tmp_path)
    entry = make_entry(ENTRY, experts=0, model_kwargs={'width': 4}, attacks={'pgd10': 41.0, 'apgd-ce10': 40.0},
                       grid=dict(spec=spec.name, config='dense', seed=0, cell='dense-seed0', stage='main'))
    write_entry(entry, registry_dir(spec))
    follow = followup_cells(spec, cells(spec), {})[0]
    assert follow['source_cell'] == 'dense-seed0' and not run_dir(follow, spec).exists()
    return spec, follow, entry


def test_a_follow_up_without_its_run_folder_evaluates_the_shipped_tag(tmp_path, study):
    spec, follow, entry = study
    file = _ship(tmp_path / 'tags')
    trained, note = shipped_run(follow, 'dense-seed0', run_dir(follow, spec), entry)
    assert Path(trained.checkpoint) == file.resolve() and trained.model == 'resnet18_dense'
    assert note.startswith(f'weights: the pretrained tag {KEY} (float16, sha256 ') and ENTRY in note
    # the grid runs the follow-up on the tag's weights and registers it, the tag's file pinned in the entry
    done = run_grid_cell(follow, spec)
    aa = next(e for e in load_entries(registry_dir(spec)) if e['grid']['stage'] == 'autoattack')
    assert done['entry'].endswith(f"{aa['entry_id']}.json") and aa['grid']['cell'] == 'dense-seed0'
    assert aa['provenance']['checkpoint_sha256'] == sha256_file(file) and aa['notes'] == [note]
    assert aa['n_examples'] == 4 and set(aa['robust_acc']) == {'apgd-ce10', 'worst_case'}
    assert not run_dir(follow, spec).exists()  # nothing trained


def test_a_tag_whose_file_is_not_the_one_its_manifest_lists_is_refused_in_one_line(tmp_path, study):
    spec, follow, entry = study
    file = _ship(tmp_path / 'tags')
    file.write_bytes(file.read_bytes()[:-1] + b'\0')
    with pytest.raises(UserError) as err:
        shipped_run(follow, 'dense-seed0', run_dir(follow, spec), entry)
    assert '\n' not in str(err.value) and f'the weights file {file.resolve()} of its shipped tag {KEY} has sha256' \
        in str(err.value) and 'its manifest lists' in str(err.value)


def test_a_run_without_a_shipped_tag_is_refused_in_one_line(tmp_path, study):
    spec, follow, entry = study
    _ship(tmp_path / 'tags', entry_id='resnet18_dense-pgd-fmnist-bundled-other1')  # another run's tag
    with pytest.raises(UserError, match='no shipped pretrained tag was made from its run') as err:
        shipped_run(follow, 'dense-seed0', run_dir(follow, spec), entry)
    assert '\n' not in str(err.value)


def test_the_dry_run_lists_the_follow_ups_once_every_cell_is_done(tmp_path):
    from rich.console import Console

    spec = _spec(tmp_path)
    console = Console(record=True, width=200)
    run_grid(spec, dry_run=True, console=console, progress=False)
    assert 'autoattack follow-ups wait for 9 unfinished cells (first: dense-seed0)' in console.export_text()
    for c in cells(spec):  # every cell done
        folder = tmp_path / 'study' / 'cells' / c['cell']
        folder.mkdir(parents=True)
        (folder / 'done.json').write_text(json.dumps(dict(cell=c['cell'], robust_acc={'apgd-ce10': 1.0})))
    out = run_grid(spec, dry_run=True, console=console, progress=False)
    text = console.export_text()
    assert len(out['skipped']) == 9 and not out['pending'] and re.search(r' 1 autoattack follow-up *\n', text)
    assert '│ autoattack-dense-seed0 │ resnet18_dense │ apgd-ce10 │ 4      │ todo   │' in text
