"""A whole tiny run: run folder contents, determinism, resume, guards, progress bar."""

import dataclasses
import json
import math
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from kerasgemma import run as run_module
from kerasgemma.config import TrainConfig
from kerasgemma.training import checkpoint
from kerasgemma import cli
from kerasgemma.errors import UserError
from kerasgemma.training.loop import TrainingDiverged
from kerasgemma.training.metrics import PLOT_DATA_KEY
from kerasgemma.training.optimizer import make_schedule
from helpers import losses, tiny_config


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("first")
    config = tiny_config(tmp_path, sample_prompts=["3加3等于几？"], max_new_tokens=3)
    return config, run_module.train(config, progress=False)


def test_run_folder_holds_config_metrics_plot_samples_and_lora(first_run):
    config, run = first_run
    run_dir = run.run_dir
    assert run_dir.parent == run_module.Path(config.output_dir)
    # Repeatable exactly, with dtype="auto" saved as what it chose (a resume
    # on other hardware keeps the run's dtype and optimizer layout).
    assert config.dtype == "auto"
    assert TrainConfig.from_file(run_dir / "config.json") == dataclasses.replace(config, dtype="float32")

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = losses(run_dir)
    val = losses(run_dir, "val_loss")
    assert sorted(train) == list(range(1, 9)) and len([r for r in records if "train_loss" in r]) == 8
    assert sorted(val) == [0, 4, 8]
    assert all(math.isfinite(v) for v in list(train.values()) + list(val.values()))
    assert val[8] < val[0]
    for record in records:
        if "val_loss" in record:
            assert record["val_perplexity"] == pytest.approx(math.exp(record["val_loss"]))
        if "train_loss" in record:
            assert record["tokens"] > 0 and record["tokens_per_second"] > 0
    # The schedule the optimizer used, step by step.
    schedule = make_schedule(config, 8)
    rates = losses(run_dir, "learning_rate")
    assert [rates[s] for s in range(1, 9)] == pytest.approx([float(schedule(s)) for s in range(8)])
    summary = run.summary
    assert (summary["step"], summary["initial_val_loss"], summary["val_loss"], summary["train_loss"]) == (
        8, val[0], val[8], train[8],
    )

    # CSV: the same numbers as the JSONL.
    import csv

    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(records)
    for row, record in zip(rows, records):
        for key, value in record.items():
            assert float(row[key]) == pytest.approx(value)

    # PNG: a real image whose plotted points are the run's losses.
    with Image.open(run_dir / "loss.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
        plotted = json.loads(image.info[PLOT_DATA_KEY])
        pixels = np.asarray(image.convert("L"))
    assert {step: value for step, value in plotted["train_loss"]} == train
    assert {step: value for step, value in plotted["val_loss"]} == val
    assert (pixels < 128).mean() > 0.01  # something is drawn

    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["question"]) for s in samples] == [(4, "3加3等于几？"), (8, "3加3等于几？")]
    assert all(isinstance(s["answer"], str) for s in samples)
    assert run.sample_log() == samples

    assert (run_dir / "adapter.lora.h5").stat().st_size > 0
    assert json.loads((run_dir / "lora.json").read_text())["rank"] == config.lora_rank
    kept = checkpoint.list_checkpoints(run_dir)
    assert [path.name for path in kept] == ["step-000006", "step-000008"]  # keep the last 2
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    saved = checkpoint.load_checkpoint(kept[-1])
    assert saved["progress"]["step"] == 8
    assert TrainConfig.from_dict(saved["config"]) == dataclasses.replace(config, dtype="float32")


@pytest.mark.slow
def test_same_seed_and_config_give_the_same_losses(first_run, tmp_path):
    config, run = first_run
    again = run_module.train(dataclasses.replace(config, output_dir=str(tmp_path)), progress=False)
    assert losses(again.run_dir) == losses(run.run_dir)
    assert losses(again.run_dir, "val_loss") == losses(run.run_dir, "val_loss")


def test_resume_from_an_earlier_checkpoint_repeats_the_same_steps(first_run, tmp_path):
    """A copy of the run as a kill after step 7 leaves it: checkpoint 6 newest,
    metrics up to step 7 with a half-written line, a half-written checkpoint."""
    _, run = first_run
    copy = shutil.copytree(run.run_dir, tmp_path / "run")
    shutil.rmtree(copy / "checkpoints" / "step-000008")
    (copy / "checkpoints" / ".tmp-step-000008").mkdir()  # never mistaken for a checkpoint
    kept = [line for line in (copy / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 7]
    (copy / "metrics.jsonl").write_text("\n".join(kept) + '\n{"step": 8, "train_lo')
    assert checkpoint.latest_checkpoint(copy).name == "step-000006"

    resumed = run_module.resume(copy, progress=False)
    assert resumed.summary["step"] == 8
    original, again = losses(run.run_dir), losses(copy)
    assert sorted(again) == list(range(1, 9))  # steps 7 and 8 once each
    assert again == pytest.approx(original, rel=1e-5)
    assert losses(copy, "val_loss") == pytest.approx(losses(run.run_dir, "val_loss"), rel=1e-5)
    samples = [json.loads(line)["step"] for line in (copy / "samples.jsonl").read_text().splitlines()]
    assert samples == [4, 8]
    assert not list((copy / "checkpoints").glob(".tmp-*"))


def _poison(trainer, at_call, where):
    """Make the weights NaN at one step: `where` is "before" (the loss of that
    step is NaN) or "after" (the loss is finite, the updated weights are not)."""
    step, calls = trainer.train_step, []

    def poisoned(state, non_trainable, batch):
        calls.append(1)
        if where == "before" and len(calls) == at_call:
            state = ([value * np.nan for value in state[0]], state[1])
        state, loss, tokens = step(state, non_trainable, batch)
        if where == "after" and len(calls) == at_call:
            state = ([value * np.nan for value in state[0]], state[1])
        return state, loss, tokens

    trainer.train_step = poisoned


@pytest.mark.parametrize(
    "where, at_call, message, last_good, last_logged",
    [
        ("before", 5, "Training loss became nan at step 5", "step-000004", 4),
        # Step 4's loss was computed from good weights; its update is what broke.
        ("after", 4, "LoRA weights became NaN or infinite at step 4", "step-000002", 4),
    ],
)
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, where, at_call, message, last_good, last_logged
):
    config = tiny_config(tmp_path, eval_every=0)
    run = run_module.start_run(config, progress=False)
    trainer, run_dir = run.trainer, run.run_dir
    _poison(trainer, at_call, where)
    with pytest.raises(TrainingDiverged, match=message) as error:
        trainer.fit()
    assert f"The last good checkpoint is {run_dir / 'checkpoints' / last_good}." in str(error.value)
    assert checkpoint.latest_checkpoint(run_dir).name == last_good
    saved = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(run_dir))
    assert all(np.isfinite(value).all() for value in saved["trainable"])
    assert max(losses(run_dir)) == last_logged  # no NaN logged
    assert (run_dir / "loss.png").is_file()  # the curve up to the divergence


def _command(argv):
    return cli.main(argv)


def test_unwritable_output_dir_fails_before_loading_anything(tmp_path, monkeypatch, capsys):
    def no_loading(*args, **kwargs):
        raise AssertionError("the output folder must be checked first")

    monkeypatch.setattr(run_module, "_build_run", no_loading)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # Tests run as root, where a read-only folder is still writable: a path
    # below a regular file cannot be created by anyone.
    config = tiny_config(tmp_path, output_dir=str(blocker / "runs"))
    with pytest.raises(UserError, match=r"cannot create a run folder under .*a-file/runs: Not a directory"):
        run_module.train(config)
    assert _command(["train", "--output-dir", str(blocker / "runs"), "--data", config.data]) == 2
    assert "kerasgemma train: error: cannot create a run folder under" in capsys.readouterr().err

    monkeypatch.setattr(run_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 5 * 2**20))
    with pytest.raises(UserError, match=r"Only 5 MiB free on the disk of .*; need at least 100 MiB"):
        run_module.train(dataclasses.replace(config, output_dir=str(tmp_path / "runs")))
    with pytest.raises(UserError, match="is not a run folder"):
        run_module.resume(tmp_path)


def test_progress_bar_shows_loss_tokens_per_second_and_eta(tmp_path, capsys):
    config = tiny_config(tmp_path, eval_every=0, save_every=0, max_steps=3)
    trainer = run_module.start_run(config, progress=True).trainer
    trainer.fit(log_every=1)
    drawn = [line for line in capsys.readouterr().err.split("\r") if "train:" in line]
    # e.g. "2/3 [00:03<00:03, 3.17s/step, loss=6.3762, tok_s=40,085]"; tqdm may skip
    # redrawing steps that finish within its refresh interval, so look for any.
    middle = [line for line in drawn if re.search(r"\b[12]/3\b", line) and "loss=" in line and "tok_s=" in line]
    assert middle, drawn
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", middle[-1])  # elapsed<remaining: the ETA
    assert "3/3" in drawn[-1]
