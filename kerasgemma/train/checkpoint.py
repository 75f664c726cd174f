"""Atomic checkpoints of what a resume needs: LoRA values, optimizer state, position.

A checkpoint is a folder `step-000120/` holding `state.npz` (trainable and
optimizer arrays in variable order; the optimizer's step counter is one of
them), `config.json` (the run's resolved config) and `progress.json` (step,
epoch, batch index in the epoch). Nothing else is random while training (no
dropout; the data order is a function of seed and epoch), so this is all a
resume needs. It is written under a `.tmp-` name, flushed to disk and renamed
into place, and old checkpoints are renamed away before they are deleted, so
a killed run never leaves a half-written or half-deleted `step-*` folder.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np

CHECKPOINT_DIR_NAME = "checkpoints"
STATE_FILE_NAME = "state.npz"
PROGRESS_FILE_NAME = "progress.json"
CHECKPOINT_CONFIG_NAME = "config.json"
_PREFIX = "step-"
_TEMPORARY_PREFIX = ".tmp-"


def save_checkpoint(run_dir, step, trainable, optimizer_variables, progress, keep=2, config=None):
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
    # Leftovers of a killed run (a checkpoint being written or deleted).
    for stale in root.glob(_TEMPORARY_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    temporary = root / f"{_TEMPORARY_PREFIX}{_PREFIX}{step:06d}"
    temporary.mkdir()
    arrays = {f"trainable_{i:04d}": np.asarray(value) for i, value in enumerate(trainable)}
    arrays.update({f"optimizer_{i:04d}": np.asarray(value) for i, value in enumerate(optimizer_variables)})
    with open(temporary / STATE_FILE_NAME, "wb") as file:
        np.savez(file, **arrays)
        file.flush()
        os.fsync(file.fileno())
    if config is not None:
        _write_synced(temporary / CHECKPOINT_CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False))
    _write_synced(temporary / PROGRESS_FILE_NAME, json.dumps(dict(progress, step=step), indent=2, sort_keys=True))
    if final.exists():
        _remove(final)
    temporary.rename(final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        _remove(old)
    return final


def _write_synced(path, text):
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def _remove(path):
    """Delete a checkpoint folder so that it never looks complete half-way:
    rename it to a `.tmp-` name first (one atomic step), then delete that."""
    doomed = path.with_name(f"{_TEMPORARY_PREFIX}delete-{path.name}")
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(run_dir):
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR_NAME
    if not root.is_dir():
        return []
    found = [
        path
        for path in root.iterdir()
        if path.name.startswith(_PREFIX)
        and (path / PROGRESS_FILE_NAME).is_file()
        and (path / STATE_FILE_NAME).is_file()
    ]
    return sorted(found, key=lambda path: int(path.name[len(_PREFIX) :]))


def latest_checkpoint(run_dir):
    """The newest complete checkpoint folder of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path):
    """Read a checkpoint: `{"trainable": [...], "optimizer": [...], "progress": {...}, "config": {...} or None}`."""
    path = Path(path)
    with np.load(path / STATE_FILE_NAME) as arrays:
        trainable = [arrays[name] for name in sorted(arrays.files) if name.startswith("trainable_")]
        optimizer = [arrays[name] for name in sorted(arrays.files) if name.startswith("optimizer_")]
    progress = json.loads((path / PROGRESS_FILE_NAME).read_text())
    config_path = path / CHECKPOINT_CONFIG_NAME
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
    return {"trainable": trainable, "optimizer": optimizer, "progress": progress, "config": config}
