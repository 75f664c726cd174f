"""Kill a training process with SIGKILL while it writes a checkpoint, resume it, and
check it ends with exactly the losses of an uninterrupted run."""

import json
import os
import subprocess
import sys
import time

import pytest

from kerasgemma import run as run_module
from kerasgemma.config import TrainConfig
from kerasgemma.training import checkpoint
from helpers import REPO_ROOT

REPO = REPO_ROOT

# The train/resume commands under their own parser (the same `add_parser` and
# `run_*` functions `kerasgemma` uses), with one test hook: the checkpoint of
# step argv[1] hangs after its arrays are written, so the kill lands while a
# checkpoint is half-written.
CHILD = """
import argparse, sys, time
import numpy as np
from kerasgemma.training import checkpoint
from kerasgemma.cli import main

hang_at = int(sys.argv[1])
savez = np.savez

def savez_then_hang(file, **arrays):
    savez(file, **arrays)
    if f"step-{hang_at:06d}" in str(file.name):
        file.flush()
        time.sleep(600)

checkpoint.np.savez = savez_then_hang
sys.exit(main(sys.argv[2:]))
"""


def _child(hang_at, *argv):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(hang_at), *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _losses(run_dir, key):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if key in record]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {record["step"]: record[key] for record in records if key in record}


def _assert_complete(root):
    """Every `step-*` folder visible now is a whole checkpoint."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith("step-"):
            whole = (path / "state.npz").is_file() and (path / "progress.json").is_file()
            assert whole or not path.exists(), f"half-written checkpoint visible: {path}"


@pytest.mark.slow
def test_sigkill_mid_checkpoint_then_resume_gives_the_uninterrupted_losses(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"question": f"{i}加{i}等于几？", "human_answers": [f"{i}加{i}等于{2 * i}。"]}, ensure_ascii=False)
            + "\n"
            for i in range(24)
        ),
        encoding="utf-8",
    )
    output = tmp_path / "runs"
    flags = [
        "--preset", "tiny:gemma", "--data", str(rows), "--sequence-length", "48", "--batch-size", "2",
        "--validation-fraction", "0.15", "--lr", "1e-2", "--warmup-steps", "2", "--max-steps", "10",
        "--eval-every", "4", "--save-every", "2", "--keep-checkpoints", "2",
        "--output-dir", str(output), "--no-progress",
    ]  # fmt: skip

    # 1. Start a run and SIGKILL it while checkpoint 6 is being written.
    child = _child(6, "train", *flags)
    deadline = time.monotonic() + 240
    half_written = None
    while half_written is None:
        assert child.poll() is None, f"training ended early: {child.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint 6 in time"
        for root in output.glob("*/checkpoints"):
            _assert_complete(root)
            if (root / ".tmp-step-000006" / "state.npz").is_file():
                half_written = root / ".tmp-step-000006"
        time.sleep(0.05)
    child.kill()  # SIGKILL
    child.communicate()
    assert child.returncode == -9
    (run_dir,) = [path.parent for path in output.glob("*/checkpoints")]
    root = run_dir / "checkpoints"
    _assert_complete(root)
    assert half_written.is_dir() and not (half_written / "progress.json").exists()
    assert [path.name for path in checkpoint.list_checkpoints(run_dir)] == ["step-000002", "step-000004"]
    assert max(_losses(run_dir, "train_loss")) == 6  # logged past the newest checkpoint

    # 2. Resume it in a new process.
    child = _child(0, "resume", str(run_dir), "--no-progress")
    while child.poll() is None:
        _assert_complete(root)
        time.sleep(0.05)
    out, err = child.communicate()
    assert child.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == str(run_dir)
    assert [path.name for path in checkpoint.list_checkpoints(run_dir)] == ["step-000008", "step-000010"]
    assert not list(root.glob(".tmp-*"))

    # 3. The same run, uninterrupted, in this process.
    config = TrainConfig.from_file(run_dir / "config.json")
    reference = run_module.train(TrainConfig.from_dict(dict(config.to_dict(), output_dir=str(tmp_path / "ref"))))
    for key in ("train_loss", "val_loss"):
        expected, resumed = _losses(reference.run_dir, key), _losses(run_dir, key)
        assert sorted(resumed) == sorted(expected)
        assert resumed == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    assert sorted(_losses(run_dir, "train_loss")) == list(range(1, 11))
