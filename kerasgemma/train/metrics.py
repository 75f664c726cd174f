"""Metrics of a run: one JSON object per line, a CSV copy, and a loss plot."""

import csv
import json
import math
from pathlib import Path

METRICS_FILE_NAME = "metrics.jsonl"
METRICS_CSV_NAME = "metrics.csv"
LOSS_PLOT_NAME = "loss.png"


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
        self.path = Path(run_dir) / METRICS_FILE_NAME

    def write(self, record):
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, sort_keys=True) + "\n")
            file.flush()

    def read(self):
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a killed run: keep what came before
        return records

    def truncate_after(self, step):
        """Drop records past `step` (used on resume from an earlier checkpoint)."""
        kept = [record for record in self.read() if record.get("step", 0) <= step]
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")
        temporary.replace(self.path)

    def write_csv(self):
        records = self.read()
        columns = sorted({key for record in records for key in record})
        path = self.path.with_name(METRICS_CSV_NAME)
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)
        temporary.replace(path)
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
        path = self.path.with_name(LOSS_PLOT_NAME)
        temporary = path.with_name("loss.tmp.png")
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
        plt.close(figure)
        temporary.replace(path)
        return path
