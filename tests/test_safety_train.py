"""Issue 14, cases 2, 3, 4 and 8: Ctrl-C saves a checkpoint, a corrupt newest checkpoint
falls back to an older one, a run folder is locked, and `resume` refuses config edits
that would change the run."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kerasgemma import cli
from kerasgemma import run as run_module
from kerasgemma.config import TrainConfig
from kerasgemma.files import RUN_LOCK
from kerasgemma.run_lock import run_lock
from kerasgemma.training import checkpoint

REPO = Path(__file__).resolve().parents[1]


def write_rows(path, count=24):
    rows = [json.dumps({"question": f"{i}加{i}等于几？", "human_answers": [f"{i}加{i}等于{2 * i}。"]},
                       ensure_ascii=False) for i in range(count)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def tiny_config(tmp_path, **changes):
    values = dict(preset="tiny:gemma", data=str(write_rows(tmp_path / "rows.jsonl")), sequence_length=48,
                  batch_size=2, validation_fraction=0.15, learning_rate=1e-2, max_steps=4, save_every=2,
                  keep_checkpoints=2, output_dir=str(tmp_path / "runs"))
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run of 4 steps with checkpoints at steps 2 and 4."""
    tmp_path = tmp_path_factory.mktemp("run")
    return run_module.train(tiny_config(tmp_path), progress=False).run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def edit_config(run_dir, **changes):
    path = run_dir / "config.json"
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


def resume_cli(run_dir, capsys):
    code = cli.main(["resume", str(run_dir), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def steps_logged(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record["step"] for record in records if "train_loss" in record]


# -- case 2: Ctrl-C --------------------------------------------------------------------


def _kerasgemma(*argv):
    env = dict(os.environ, PYTHONPATH=str(REPO), KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "kerasgemma", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_continues_from_it(tmp_path):
    runs = tmp_path / "runs"
    process = _kerasgemma(
        "train", "--preset", "tiny:gemma", "--data", str(write_rows(tmp_path / "rows.jsonl")),
        "--sequence-length", "48", "--batch-size", "2", "--max-steps", "400", "--save-every", "1000",
        "--output-dir", str(runs), "--no-progress",
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        metrics = list(runs.glob("*/metrics.jsonl"))
        if metrics and '"train_loss"' in metrics[0].read_text():
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    (run_dir,) = runs.iterdir()
    assert f"kerasgemma resume {run_dir}" in err
    saved = checkpoint.latest_good_checkpoint(run_dir)
    reached = json.loads((saved / "progress.json").read_text())["step"]
    assert 1 <= reached < 400 and max(steps_logged(run_dir)) == reached

    # Resume from that step (fewer steps to finish: max_steps may change on resume).
    edit_config(run_dir, max_steps=reached + 2)
    resumed = _kerasgemma("resume", str(run_dir), "--no-progress")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming from {saved.name}" in out
    assert steps_logged(run_dir) == list(range(1, reached + 3))


# -- case 3: a corrupt newest checkpoint -----------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip"])
def test_damaged_checkpoints_are_found(finished_run, tmp_path, damage):
    folder = Path(shutil.copytree(checkpoint.latest_checkpoint(finished_run), tmp_path / "step-000004"))
    state = folder / "state.npz"
    data = state.read_bytes()
    if damage == "truncate":
        state.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        state.write_bytes(b"")
    else:
        middle = len(data) // 2
        state.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
    assert checkpoint.checkpoint_problem(folder) == f"{state}: checksum mismatch (truncated or corrupted)"


def test_resume_falls_back_to_the_newest_good_checkpoint(run_copy, capsys):
    bad = run_copy / "checkpoints" / "step-000004" / "state.npz"
    bad.write_bytes(bad.read_bytes()[:100])
    edit_config(run_copy, max_steps=5)
    code, out, err = resume_cli(run_copy, capsys)
    assert code == 0, err
    assert f"skipping checkpoint step-000004: {bad}: checksum mismatch" in err
    assert "resuming from step-000002" in out
    assert steps_logged(run_copy) == [1, 2, 3, 4, 5]


# -- case 4: one process per run folder ------------------------------------------------


def test_a_locked_run_folder_is_refused(run_copy, capsys):
    with run_lock(run_copy, "resume"):
        code, _, err = resume_cli(run_copy, capsys)
        assert code == 2
        assert f"{run_copy} is in use by `kerasgemma resume` (pid {os.getpid()}" in err
        code = cli.main(["export", str(run_copy), str(run_copy.parent / "hf"), "--no-verify", "--no-progress"])
        assert code == 2 and "is in use by" in capsys.readouterr().err
    assert not (run_copy / RUN_LOCK).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(run_copy, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_copy / RUN_LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "train"}))
    edit_config(run_copy, max_steps=5)
    code, _, err = resume_cli(run_copy, capsys)
    assert code == 0, err
    assert not (run_copy / RUN_LOCK).exists()


@pytest.mark.slow
def test_two_resumes_at_once_one_refuses_and_metrics_stay_unique(run_copy):
    edit_config(run_copy, max_steps=12)
    first, second = _kerasgemma("resume", str(run_copy), "--no-progress"), None
    deadline = time.time() + 120
    while not (run_copy / RUN_LOCK).exists() and time.time() < deadline:
        time.sleep(0.1)
    # The first resume is paused while it holds the lock: otherwise it can
    # finish its steps before the second has done its imports (~5-10 s), and
    # the second then finds a finished run, not a busy one.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = _kerasgemma("resume", str(run_copy), "--no-progress")
        _, err2 = second.communicate(timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 2 and "is in use by `kerasgemma resume`" in err2 and "Traceback" not in err2
    steps = steps_logged(run_copy)
    assert steps == sorted(set(steps)) == list(range(1, 13))


# -- case 8: config edited before resume -----------------------------------------------


@pytest.mark.parametrize("changes, named", [
    ({"lora_rank": 8}, "lora_rank 4 -> 8"),
    ({"learning_rate": 0.02}, "learning_rate 0.01 -> 0.02"),
    ({"batch_size": 4}, "batch_size 2 -> 4"),
])
def test_resume_refuses_edits_that_change_the_run(run_copy, capsys, changes, named):
    edit_config(run_copy, **changes)
    before = (run_copy / "metrics.jsonl").read_text()
    code, _, err = resume_cli(run_copy, capsys)
    assert code == 2 and named in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert (run_copy / "metrics.jsonl").read_text() == before


def test_resume_honours_and_reports_allowed_edits(run_copy, capsys):
    edit_config(run_copy, max_steps=6, eval_every=3)
    code, out, err = resume_cli(run_copy, capsys)
    assert code == 0, err
    assert "resuming with changed settings: max_steps 4 -> 6, eval_every 0 -> 3" in out
    assert steps_logged(run_copy) == [1, 2, 3, 4, 5, 6]
