"""Issue 14, cases 1, 5, 6 and 9: export never deletes what it did not create, exports an
unfinished run from its checkpoint, checks the Hub token first, cleans up after a killed
export, and creates files with the user's umask."""

import http.server
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from kerasgemma import cli
from kerasgemma import run as run_module
from kerasgemma.config import TrainConfig
from kerasgemma.files import EXPORT_MARKER

REPO = Path(__file__).resolve().parents[1]
FAST = ["--no-verify", "--no-progress", "--dtype", "float32"]


def export_cli(capsys, *argv):
    code = cli.main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def fake_run(folder):
    """A run folder as `train` leaves it before its first checkpoint."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TrainConfig(preset="tiny:gemma").to_dict()))
    return folder


# -- case 1: the output path -----------------------------------------------------------


def test_export_into_the_current_folder_is_refused(tmp_path, capsys, monkeypatch):
    project = tmp_path / "project"
    run = fake_run(project / "runs" / "r1")
    (project / "train.py").write_text("print('mine')\n")
    monkeypatch.chdir(project)
    code, _, err = export_cli(capsys, str(run), ".", *FAST)
    assert code == 2 and "is the current folder" in err and "Traceback" not in err
    code, _, err = export_cli(capsys, str(run), str(tmp_path), *FAST, "--overwrite")
    assert code == 2 and "contains the current folder" in err
    assert (project / "train.py").read_text() == "print('mine')\n" and (run / "config.json").is_file()


def test_export_over_its_own_source_is_refused(tmp_path, capsys):
    run = fake_run(tmp_path / "proj" / "run1")
    code, _, err = export_cli(capsys, str(run), str(tmp_path / "proj"), *FAST, "--overwrite")
    assert code == 2 and f"contains the source {run}" in err
    code, _, err = export_cli(capsys, str(run), str(run), *FAST, "--overwrite")
    assert code == 2 and f"is the source {run}" in err
    assert (run / "config.json").is_file()


def test_a_folder_of_the_users_files_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = export_cli(capsys, "tiny:gemma", str(out), *FAST)
    assert code == 2
    assert "is not empty and is not a kerasgemma export (it holds notes.txt)" in err and "--overwrite" in err
    assert (out / "notes.txt").read_text() == "keep me"
    # A previous export is replaced without asking, and with --overwrite so is anything.
    code, _, err = export_cli(capsys, "tiny:gemma", str(out), *FAST, "--overwrite")
    assert code == 0, err
    assert not (out / "notes.txt").exists() and (out / EXPORT_MARKER).is_file()
    code, _, err = export_cli(capsys, "tiny:gemma", str(out), *FAST)
    assert code == 0, err
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


# -- case 5: a run that did not finish -------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("run")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"question": f"{i}加{i}?", "human_answers": [f"{2 * i}"]}) + "\n"
                            for i in range(16)))
    config = TrainConfig(preset="tiny:gemma", data=str(rows), sequence_length=32, batch_size=2,
                         validation_fraction=0.0, learning_rate=1e-2, max_steps=3, save_every=1,
                         output_dir=str(tmp_path / "runs"))
    return run_module.train(config, progress=False).run_dir


def test_an_unfinished_run_exports_its_newest_good_checkpoint(finished_run, tmp_path, capsys):
    code, _, err = export_cli(capsys, str(finished_run), str(tmp_path / "done"), *FAST)
    assert code == 0, err
    killed = Path(shutil.copytree(finished_run, tmp_path / "killed"))
    (killed / "adapter.lora.h5").unlink()
    (killed / "lora.json").unlink()
    code, out, err = export_cli(capsys, str(killed), str(tmp_path / "hf"), "--no-progress", "--no-mlx",
                                "--dtype", "float32", "--max-new-tokens", "2")
    assert code == 0, err
    assert "exporting checkpoint step-000003 (step 3)" in out and "PASSED" in out
    # The last checkpoint is the finished model: the same merged weights.
    done, resumed = load_file(str(tmp_path / "done" / "model.safetensors")), load_file(
        str(tmp_path / "hf" / "model.safetensors"))
    assert all(np.array_equal(done[name], resumed[name]) for name in done)
    # A corrupt newest checkpoint: the one before it, named.
    state = killed / "checkpoints" / "step-000003" / "state.npz"
    state.write_bytes(b"")
    code, out, err = export_cli(capsys, str(killed), str(tmp_path / "hf"), *FAST)
    assert code == 0 and f"{state}: checksum mismatch" in err and "step-000002 (step 2)" in out


def test_a_run_without_checkpoints_says_what_is_missing(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    code, _, err = export_cli(capsys, str(run), str(tmp_path / "hf"), *FAST)
    assert code == 2 and "Traceback" not in err
    assert "did not finish (no adapter.lora.h5) and has no usable checkpoint" in err
    assert "kerasgemma resume" in err and "save_to_preset" not in err
    assert not (tmp_path / "hf").exists()


# -- case 6: the Hub token is checked before any work ----------------------------------


def test_push_without_a_token_refuses_before_exporting(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(PYTHONPATH=str(REPO), KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, "-m", "kerasgemma", "export", "tiny:gemma", str(tmp_path / "hf"),
                             "--push", "me/model"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "kerasgemma export: error: no Hugging Face token for --push: run `hf auth login` or set HF_TOKEN.")
    assert "Traceback" not in result.stderr and "loading" not in result.stdout
    assert not (tmp_path / "hf").exists()


class _RejectingHub:
    """A Hub stand-in whose whoami answers 401, as the real Hub does for a bad token."""

    def __enter__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = b'{"error": "Invalid credentials in Authorization header"}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_push_with_a_rejected_token_refuses_before_exporting(tmp_path, capsys, monkeypatch):
    secret = "hf_rejectedSECRET0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    with _RejectingHub() as url:
        code, out, err = export_cli(capsys, "tiny:gemma", str(tmp_path / "hf"), "--push", "me/m",
                                    "--hub-endpoint", url)
    assert code == 2 and "rejected the Hugging Face token (401)" in err
    assert secret not in out + err and "loading" not in out
    assert not (tmp_path / "hf").exists()


# -- case 9: a killed export, and file modes -------------------------------------------

HOLD_SCRATCH = """
import os, sys, time
from kerasgemma.export.folder import atomic_folder
with atomic_folder(sys.argv[1]) as scratch:
    open(os.path.join(scratch, "config.json"), "w").write("{}")
    print(scratch, flush=True)
    time.sleep(600)
"""


def test_a_killed_exports_scratch_is_removed_by_the_next_export(tmp_path, capsys):
    target = tmp_path / "hf"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", HOLD_SCRATCH, str(target)], env=env,
                             stdout=subprocess.PIPE, text=True)
    scratch = Path(child.stdout.readline().strip())
    assert scratch.name.startswith(".tmp-hf.export-") and (scratch / "config.json").is_file()
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert scratch.exists()  # what a kill -9 leaves behind
    code, _, err = export_cli(capsys, "tiny:gemma", str(target), *FAST)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_exported_files_follow_the_umask(tmp_path, capsys):
    previous = os.umask(0o022)
    try:
        code, _, err = export_cli(capsys, "tiny:gemma", str(tmp_path / "hf"), "--no-progress", "--no-mlx",
                                  "--dtype", "float32", "--max-new-tokens", "2")
    finally:
        os.umask(previous)
    assert code == 0, err
    folder = tmp_path / "hf"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    for name in ("config.json", "model.safetensors", "verification.json", "README.md"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
