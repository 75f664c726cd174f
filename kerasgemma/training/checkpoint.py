"""Atomic checkpoints of what a resume needs: LoRA values, optimizer state, position.

A checkpoint is a folder `step-000120/` holding `state.npz` (trainable and
optimizer arrays in variable order; the optimizer's step counter is one of
them), `config.json` (the run's resolved config) and `progress.json` (step,
epoch, batch index in the epoch). Nothing else is random while training (no
dropout; the data order is a function of seed and epoch), so this is all a
resume needs. `progress.json` also holds the sha256 of `state.npz`, so a
truncated or bit-flipped file is found before it is loaded
(`latest_good_checkpoint` then falls back to the newest good one). It is written under a `.tmp-` name, flushed to disk and renamed
into place, and old checkpoints are renamed away before they are deleted, so
a killed run never leaves a half-written or half-deleted `step-*` folder.
"""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from kerasgemma.files import CHECKPOINT_CONFIG as CHECKPOINT_CONFIG_NAME
from kerasgemma.files import CHECKPOINT_PROGRESS as PROGRESS_FILE_NAME
from kerasgemma.files import CHECKPOINT_STATE as STATE_FILE_NAME
from kerasgemma.files import CHECKPOINTS_DIR as CHECKPOINT_DIR_NAME
from kerasgemma.files import TEMPORARY_PREFIX as _TEMPORARY_PREFIX

_PREFIX = "step-"
SHA256_KEY = "state_sha256"


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
    progress = dict(progress, step=step, **{SHA256_KEY: _sha256(temporary / STATE_FILE_NAME)})
    if config is not None:
        _write_synced(temporary / CHECKPOINT_CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False))
    _write_synced(temporary / PROGRESS_FILE_NAME, json.dumps(progress, indent=2, sort_keys=True))
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
    """The newest complete checkpoint folder of a run, or None (not verified)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_problem(path):
    """Why the checkpoint folder `path` cannot be loaded, or None if it is good.

    Checks the sha256 written with `state.npz`; a checkpoint from before
    checksums is read in full instead.

    Example:
    >>> import tempfile, numpy as np
    >>> good = save_checkpoint(tempfile.mkdtemp(), 1, [np.ones(2)], [], {})
    >>> checkpoint_problem(good) is None
    True
    >>> _ = (good / STATE_FILE_NAME).write_bytes(b"")
    >>> checkpoint_problem(good).endswith("state.npz: checksum mismatch (truncated or corrupted)")
    True
    """
    path = Path(path)
    state = path / STATE_FILE_NAME
    try:
        progress = json.loads((path / PROGRESS_FILE_NAME).read_text(encoding="utf-8"))
        expected = progress.get(SHA256_KEY)
        if expected is not None:
            return None if _sha256(state) == expected else f"{state}: checksum mismatch (truncated or corrupted)"
        load_checkpoint(path)
    except Exception as error:  # noqa: BLE001 - any failure to read means "not usable"
        return f"{state}: unreadable ({type(error).__name__}: {error})"
    return None


def latest_good_checkpoint(run_dir, warn=None):
    """The newest checkpoint that passes `checkpoint_problem`, or None.

    Each bad newer one is reported through `warn` (default: a line on
    stderr), naming the file, and skipped.
    """
    warn = warn or (lambda message: print(message, file=sys.stderr))
    for path in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        warn(f"warning: skipping checkpoint {path.name}: {problem}")
    return None


def load_config(path):
    """The run config saved with checkpoint `path` (a dict), or None if it has none."""
    config_path = Path(path) / CHECKPOINT_CONFIG_NAME
    return json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None


def load_checkpoint(path):
    """Read a checkpoint: `{"trainable": [...], "optimizer": [...], "progress": {...}, "config": {...} or None}`."""
    path = Path(path)
    with np.load(path / STATE_FILE_NAME) as arrays:
        trainable = [arrays[name] for name in sorted(arrays.files) if name.startswith("trainable_")]
        optimizer = [arrays[name] for name in sorted(arrays.files) if name.startswith("optimizer_")]
    progress = json.loads((path / PROGRESS_FILE_NAME).read_text())
    return {"trainable": trainable, "optimizer": optimizer, "progress": progress, "config": load_config(path)}
