"""Atomic checkpoints of what a resume needs: LoRA values, optimizer state, position.

A checkpoint is a folder `step-000120/` holding `state.npz` (trainable and
optimizer arrays in variable order) and `progress.json` (step, epoch, batch
index in the epoch). It is written under a temporary name and renamed into
place, so a killed run never leaves a half-written checkpoint that looks
complete; `progress.json` is written last inside it.
"""

import json
import shutil
from pathlib import Path

import numpy as np

CHECKPOINT_DIR_NAME = "checkpoints"
STATE_FILE_NAME = "state.npz"
PROGRESS_FILE_NAME = "progress.json"
_PREFIX = "step-"


def save_checkpoint(run_dir, step, trainable, optimizer_variables, progress, keep=2):
    """Write a checkpoint for `step` and delete all but the newest `keep`.

    Example:
    >>> import tempfile, numpy as np
    >>> run = tempfile.mkdtemp()
    >>> path = save_checkpoint(run, 3, [np.ones(2)], [np.zeros(1)], {"epoch": 0, "batch": 3})
    >>> path.name, load_checkpoint(path)["progress"]["step"]
    ('step-000003', 3)
    """
    root = Path(run_dir) / CHECKPOINT_DIR_NAME
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:06d}"
    temporary = root / f".tmp-{_PREFIX}{step:06d}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    arrays = {f"trainable_{i:04d}": np.asarray(value) for i, value in enumerate(trainable)}
    arrays.update({f"optimizer_{i:04d}": np.asarray(value) for i, value in enumerate(optimizer_variables)})
    with open(temporary / STATE_FILE_NAME, "wb") as file:
        np.savez(file, **arrays)
    (temporary / PROGRESS_FILE_NAME).write_text(json.dumps(dict(progress, step=step), indent=2, sort_keys=True))
    shutil.rmtree(final, ignore_errors=True)
    temporary.rename(final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir):
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR_NAME
    if not root.is_dir():
        return []
    found = [
        path
        for path in root.iterdir()
        if path.name.startswith(_PREFIX) and (path / PROGRESS_FILE_NAME).is_file()
    ]
    return sorted(found, key=lambda path: int(path.name[len(_PREFIX) :]))


def latest_checkpoint(run_dir):
    """The newest complete checkpoint folder of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path):
    """Read a checkpoint: `{"trainable": [...], "optimizer": [...], "progress": {...}}`."""
    path = Path(path)
    with np.load(path / STATE_FILE_NAME) as arrays:
        trainable = [arrays[name] for name in sorted(arrays.files) if name.startswith("trainable_")]
        optimizer = [arrays[name] for name in sorted(arrays.files) if name.startswith("optimizer_")]
    progress = json.loads((path / PROGRESS_FILE_NAME).read_text())
    return {"trainable": trainable, "optimizer": optimizer, "progress": progress}
