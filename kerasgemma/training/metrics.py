"""Metrics of a run: one JSON object per line, a CSV copy, and a loss plot."""

import csv
import json
import math
from pathlib import Path

from kerasgemma.atomic import replacing
from kerasgemma.atomic import write_text_atomic
from kerasgemma.files import LOSS_PLOT
from kerasgemma.files import METRICS_CSV
from kerasgemma.files import METRICS_JSONL

PLOT_DATA_KEY = "kerasgemma:losses"


def read_jsonl(path):
    """Records of a JSONL file; a line cut short by a killed run is skipped.

    Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.jsonl"
    >>> _ = path.write_text('{"step": 1}\\n{"step": 2, "tra')
    >>> read_jsonl(path)
    [{'step': 1}]
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_jsonl(path, step):
    """Keep only the records of a JSONL file with `step <= step`, atomically.

    A resumed run repeats the steps after its checkpoint; their records from
    the killed run (and any half-written last line) must go.
    """
    path = Path(path)
    if not path.is_file():
        return
    kept = [record for record in read_jsonl(path) if record.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in kept))


def training_summary(run_dir):
    """Steps, tokens and first/last losses from a run's `metrics.jsonl`, or None.

    Example:
    >>> import tempfile
    >>> training_summary(tempfile.mkdtemp()) is None
    True
    """
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return None
    records = read_jsonl(path)
    summary = {
        "steps": max((r.get("step", 0) for r in records), default=0),
        "tokens": sum(r.get("tokens", 0) for r in records),
    }
    for key in ("train_loss", "val_loss"):
        values = [r[key] for r in records if key in r]
        if values:
            summary[key] = {"first": values[0], "last": values[-1]}
    return summary


class MetricsLog:
    """Append-only metrics log of a run folder.

    Example:
    >>> import tempfile
    >>> log = MetricsLog(tempfile.mkdtemp())
    >>> log.write({"step": 1, "train_loss": 2.5})
    >>> log.read()[0]["train_loss"]
    2.5
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / METRICS_JSONL

    def write(self, record):
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, sort_keys=True) + "\n")
            file.flush()

    def read(self):
        return read_jsonl(self.path)

    def truncate_after(self, step):
        """Drop records past `step` (used on resume from an earlier checkpoint)."""
        truncate_jsonl(self.path, step)

    def write_csv(self):
        records = self.read()
        columns = sorted({key for record in records for key in record})
        path = self.path.with_name(METRICS_CSV)
        with replacing(path) as scratch, open(scratch, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)
        return path

    def plot(self):
        """Render training and validation loss against step to `loss.png`."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.read()
        figure, axis = plt.subplots(figsize=(7, 4))
        for key, label in (("train_loss", "training"), ("val_loss", "validation")):
            points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, marker="o" if key == "val_loss" else None, label=label)
        axis.set_xlabel("step")
        axis.set_ylabel("loss (mean over answer tokens)")
        axis.legend()
        axis.grid(alpha=0.3)
        path = self.path.with_name(LOSS_PLOT)
        # The plotted points also go into the PNG's text metadata, so the
        # image can be checked against metrics.jsonl without reading pixels.
        plotted = {key: [[r["step"], r[key]] for r in records if key in r] for key in ("train_loss", "val_loss")}
        with replacing(path) as scratch:
            figure.savefig(scratch, dpi=100, bbox_inches="tight", metadata={PLOT_DATA_KEY: json.dumps(plotted)})
        plt.close(figure)
        return path
