"""The weights of a finished cell whose run folder is gone, from the pretrained tag shipped from it (`timm-moe ship`).

A study outlives its machines: its registry entries are committed, its run folders are not. What it ships as
pretrained tags is committed with the package, each tag's manifest record naming the registry entry of the run it
was made from (`entry_id`, one per run). So a follow-up evaluation (`bench.pipeline.followup`) of a cell whose
folder is gone evaluates that tag, checked against the sha256 its manifest lists.

A tag is the run's weights written anew, float16 when the package would be too large in float32 (`ship --dtype`):
its file is not the run's model.pth, whose sha256 the cell's entry holds, and its weights may be rounded. The
follow-up's entry therefore pins the tag's file (its provenance sha256) and says in its notes which tag, in which
dtype, it evaluated; the study report compares its clean predictions with those of the cell's run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Tuple

from timm.models import split_model_name_tag

from timm_moe.models.pretrained import read_manifest

from bench.core.errors import UserError
from bench.core.provenance import sha256_file
from bench.training.record import TrainRecord


def shipped_run(cell: Mapping[str, Any], source: str, run: Path, entry: Mapping[str, Any]) -> Tuple[TrainRecord, str]:
    """(the training record to evaluate, the entry note) of the tag shipped from cell `source`'s run.

    Args:
        cell: The follow-up cell (its `spec` is the model the tag must be).
        source: The cell whose run the weights are of.
        run: That cell's run folder, which is gone.
        entry: That cell's main registry entry.

    Raises:
        UserError: no tag was shipped from the run, the tag is of another model, or its file is missing or is not
            the file its manifest lists.
    """
    gone = f'cell {cell["cell"]} needs the trained weights of cell {source}, whose run folder {run} is gone'
    shipped = sorted((key, r) for key, r in read_manifest().items() if r.get('entry_id') == entry['entry_id'])
    if not shipped:
        raise UserError(f'{gone}, and no shipped pretrained tag was made from its run (entry {entry["entry_id"]}): '
                        'restore the folder, or remove that entry from the registry to retrain it')
    key, record = shipped[0]
    name = split_model_name_tag(key)[0]
    if name != cell['spec'].name:
        raise UserError(f'{gone}; the tag {key} shipped from its entry {entry["entry_id"]} is of {name}, not '
                        f'{cell["spec"].name}: ship the study again')
    file = Path(record['path'])
    if not file.is_file():
        raise UserError(f'{gone}; its shipped tag {key} lists the weights file {file}, which is missing: reinstall '
                        'timm-moe or ship the tags again')
    got = sha256_file(file)
    if got != record['sha256']:
        raise UserError(f'{gone}; the weights file {file} of its shipped tag {key} has sha256 {got[:12]}..., its '
                        f'manifest lists {record["sha256"][:12]}...: reinstall timm-moe or ship the tags again')
    trained = TrainRecord(run_dir=str(run), checkpoint=str(file), safetensors=str(file), model=name,
                          model_kwargs=dict(entry['model']['kwargs']), history=[], steps=0, img_per_s=None,
                          config_sha256=entry['training']['config_sha256'])
    note = (f'weights: the pretrained tag {key} ({record["dtype"]}, sha256 {record["sha256"][:12]}), shipped from '
            f'the run of entry {entry["entry_id"]}, whose run folder was gone')
    return trained, note
