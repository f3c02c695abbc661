"""Resume for `timm-moe eval`: a JSON-lines sidecar with one record per finished (attack, batch), and the batch's
adversarial examples next to it, so that a killed evaluation continues where it stopped."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from bench.core.atomic import atomic_save
from bench.core.errors import UserError

if TYPE_CHECKING:  # torch loads where tensors are read: `timm-moe eval` checks --json's sidecar before it
    import torch

SIDECAR_SUFFIX = '.partial.jsonl'
# key of the routing analysis' crafted examples in the sidecar's example store (no attack has this name)
ROUTING_KEY = 'routing'


# ---------------------------------------------------------------------------------------------- resume sidecar

def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' bytes: ties a sidecar to its exact data and weights."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BatchLog:
    """Per-(attack, batch) results appended to a JSON-lines sidecar, so that a killed run can resume.

    The first line is a fingerprint of everything that determines the results (attack settings, eps, data,
    weights); resuming against a different fingerprint is refused rather than mixing two evaluations.
    Each batch's adversarial examples (which the sanity checks re-verify, and which routing under attack
    reuses) go to `<path>.adv/`, one file per (attack, batch), written before the batch's record; a record
    whose examples are missing or unreadable is run again rather than trusted.

    Args:
        path: The sidecar file, or None to keep nothing.
        fingerprint: JSON-able description of the evaluation.
        resume: Reuse the batches recorded in `path` (a missing file simply starts afresh).
    """

    def __init__(self, path: Optional[Path], fingerprint: dict, resume: bool) -> None:
        self.path = Path(path) if path is not None else None
        self.adv_dir = self.adv_dir_of(self.path) if self.path is not None else None
        self.records: Dict[Tuple[str, int], dict] = {}
        if self.path is None:
            return
        if resume and self.path.exists():
            lines = self.path.read_text().splitlines()
            header = self._header(lines[0]) if lines else {}
            if header.get('fingerprint') != fingerprint:
                raise UserError(f'--resume: {self.path} was written by a different evaluation (model, data or '
                                f'settings differ); delete it or run without --resume')
            for line in lines[1:]:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill: that batch simply runs again
                    continue
                self.records[(rec['attack'], rec['batch'])] = rec
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.adv_dir, ignore_errors=True)  # examples of an older evaluation
            self.path.write_text(json.dumps({'fingerprint': fingerprint}) + '\n')

    def _header(self, line: str) -> dict:
        """The sidecar's first line, which the evaluation wrote whole before any batch; anything else there means
        the file is not (or no longer) a sidecar of ours, which only the user can sort out."""
        try:
            header = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f'--resume: the first line of {self.path} is not the JSON header an evaluation writes '
                            f'({e.msg}); delete the file or run with --overwrite') from None
        if not isinstance(header, dict):
            raise UserError(f'--resume: the first line of {self.path} is {type(header).__name__}, not the JSON '
                            'header an evaluation writes; delete the file or run with --overwrite')
        return header

    def get(self, attack: str, batch: int) -> Optional[dict]:
        return self.records.get((attack, batch))

    def put(self, attack: str, batch: int, correct: List[bool], seconds: float,
            warnings: Sequence[str] = ()) -> None:
        rec = dict(attack=attack, batch=batch, correct=[int(c) for c in correct], seconds=seconds,
                   warnings=list(warnings))
        self.records[(attack, batch)] = rec
        if self.path is not None:
            with self.path.open('a') as f:
                f.write(json.dumps(rec) + '\n')
                f.flush()
                os.fsync(f.fileno())

    def put_tensors(self, key: str, batch: int, tensors: Dict[str, torch.Tensor]) -> None:
        if self.adv_dir is not None:
            self.adv_dir.mkdir(exist_ok=True)
            atomic_save({k: v.detach().cpu() for k, v in tensors.items()}, self.adv_dir / f'{key}-{batch}.pt')

    def get_tensors(self, key: str, batch: int, n: int) -> Optional[Dict[str, torch.Tensor]]:
        """The stored tensors of (key, batch), or None when missing, unreadable or not `n` rows each (the caller
        computes them again)."""
        f = self.adv_dir / f'{key}-{batch}.pt' if self.adv_dir is not None else None
        if f is None or not f.is_file():
            return None
        import torch

        from bench.checkpoints import read_torch_file
        try:
            obj = read_torch_file(f, 'stored adversarial examples')
        except UserError:
            return None
        ok = isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) and len(v) == n for v in obj.values())
        return obj if ok else None

    @staticmethod
    def adv_dir_of(path: Path) -> Path:
        return Path(str(path) + '.adv')

    @staticmethod
    def discard(path: Optional[Path]) -> None:
        """Delete a sidecar and its stored examples: the evaluation is complete."""
        if path is not None:
            Path(path).unlink(missing_ok=True)
            shutil.rmtree(BatchLog.adv_dir_of(path), ignore_errors=True)
