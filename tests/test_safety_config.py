"""Issue 14, case 7 (settings that cannot train) and case 10 (data files): one line per
problem, exit code 2, no traceback, no run folder left behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kerasgemma import cli
from kerasgemma.config import TrainConfig
from kerasgemma.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write_rows(path, count=12, bad_line=None):
    rows = [json.dumps({"question": f"{i}加{i}等于几？", "human_answers": [f"{2 * i}。"]}, ensure_ascii=False)
            for i in range(count)]
    if bad_line is not None:
        rows[bad_line - 1] = '{"question": "q", "human_answers": 5}'
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def train_cli(tmp_path, capsys, *flags):
    """Run `kerasgemma train` in-process on a tiny model; returns (code, stderr, run folders)."""
    data = write_rows(tmp_path / "rows.jsonl")
    runs = tmp_path / "runs"
    code = cli.main(["train", "--preset", "tiny:gemma", "--data", str(data), "--max-steps", "1",
                     "--sequence-length", "32", "--batch-size", "2", "--output-dir", str(runs), "--no-progress",
                     *flags])
    err = capsys.readouterr().err
    return code, err, sorted(runs.iterdir()) if runs.exists() else []


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-0.001"], "learning_rate must be > 0, got -0.001"),
    (["--sequence-length", "0"], "sequence_length must be at least 2, got 0"),
    (["--batch-size", "0"], "batch_size must be at least 1, got 0"),
    (["--lora-targets", "query,valu"], "lora_targets: Unknown LoRA target layer(s) ['valu']"),
    (["--config", "/nonexistent/run.yaml"], "Config file not found: /nonexistent/run.yaml"),
    (["--data", "/nonexistent/rows.jsonl"], "data: no such file or folder '/nonexistent/rows.jsonl'"),
])
def test_bad_settings_fail_in_one_line_before_the_run_folder(tmp_path, capsys, flags, message):
    code, err, folders = train_cli(tmp_path, capsys, *flags)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith("kerasgemma train: error:")
    assert folders == []


def test_every_problem_is_listed_one_per_line(tmp_path, capsys):
    code, err, folders = train_cli(tmp_path, capsys, "--lr", "-1", "--batch-size", "0", "--schedule", "cosin")
    lines = err.strip().splitlines()
    assert code == 2 and folders == [] and len(lines) == 3
    assert all("settings:" in line for line in lines)


def test_unknown_and_mistyped_config_keys(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("lora_rnak: 8\n")
    code, err, folders = train_cli(tmp_path, capsys, "--config", str(config))
    assert code == 2 and folders == []
    assert f"{config}: unknown setting 'lora_rnak' (did you mean 'lora_rank'?)" in err
    config.write_text("lora_rank: abc\n")
    code, err, folders = train_cli(tmp_path, capsys, "--config", str(config))
    assert code == 2 and "Config key 'lora_rank': expected int, got 'abc'" in err and folders == []
    config.write_text("lora_rank: [unclosed\n")
    code, err, _ = train_cli(tmp_path, capsys, "--config", str(config))
    assert code == 2 and "not valid YAML" in err and len(err.strip().splitlines()) == 1
    # The escape hatch: warn and ignore.
    assert TrainConfig.from_dict({"lora_rnak": 8}, allow_unknown_keys=True).lora_rank == 4


def test_bad_data_row_in_train_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    data = write_rows(tmp_path / "bad.jsonl", bad_line=3)
    code, err, folders = train_cli(tmp_path, capsys, "--data", str(data))
    assert code == 2 and "bad.jsonl:3" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert folders == []


@pytest.mark.slow  # a whole `kerasgemma train` start-up; the in-process tests above cover main()
def test_a_real_subprocess_prints_no_traceback(tmp_path):
    """The console entry point, not only `main()`: exit 2 and one line."""
    env = dict(os.environ, PYTHONPATH=str(REPO), KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "kerasgemma", "train", "--preset", "tiny:gemma", "--data", "hub",
         "--lora-rank", "0", "--output-dir", str(tmp_path / "runs")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    # (TensorFlow may log its own lines first.)
    assert result.stderr.strip().splitlines()[-1] == (
        "kerasgemma train: error: settings: lora_rank must be at least 1, got 0")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


# -- case 10: data files ---------------------------------------------------------------


def test_parquet_without_the_answers_column_names_it(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"question": ["q1", "q2"], "answer": ["a1", "a2"]}), path)
    code = cli.main(["data", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "rows.parquet" in err and "human_answers" in err and "missing column" in err
    assert "no non-empty answer" not in err


def test_folder_with_unsupported_files_names_them(tmp_path, capsys):
    write_rows(tmp_path / "rows.jsonl")
    (tmp_path / "notes.txt").write_text("more questions\n")
    code = cli.main(["data", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "notes.txt" in err and "Traceback" not in err
    # Skipping is a choice the user makes, and it is counted.
    code = cli.main(["data", str(tmp_path), "--on-error", "skip", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out.strip().splitlines()[-1])["skipped"].get("unsupported_file") == 1


def test_validate_lists_problems_as_a_user_error():
    with pytest.raises(UserError, match="keep_checkpoints must be at least 1"):
        TrainConfig(keep_checkpoints=0).validate()


def test_other_input_mistakes_are_one_line(tmp_path, capsys):
    text = tmp_path / "rows.txt"
    text.write_text("a question\n")
    assert cli.main(["data", str(text)]) == 2
    assert "rows.txt: unsupported file type" in capsys.readouterr().err
    code, err, folders = train_cli(tmp_path, capsys, "--preset", str(tmp_path / "no-such-preset"))
    assert code == 2 and "cannot load preset" in err and len(err.strip().splitlines()) == 1
    assert folders == []  # the folder made before loading is removed again
    assert cli.main(["resume", str(tmp_path / "no-such-run")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert cli.main(["data", str(text.with_suffix(".jsonl")), "--preset", str(tmp_path / "no-such-preset")]) == 2
    assert "cannot load preset" in capsys.readouterr().err
