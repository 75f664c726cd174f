"""Counts that each data step reports, as plain dataclasses that turn into JSON."""

import dataclasses

import numpy as np


@dataclasses.dataclass
class LoadReport:
    """What loading saw: rows read, examples kept, rows skipped by reason.

    Args:
        files: list of str. The files read.
        rows_read: int. Rows seen, bad ones included (blank lines and empty
            files are not rows).
        examples: int. Examples kept (after duplicates were removed).
        skipped: dict of str to int. Skipped rows by problem kind.
        duplicates_removed: int. Exact duplicate conversations dropped.
        formats: dict of str to str. The row form of each file (or split)
            read, e.g. `{"zh.jsonl": "alpaca"}`.

    Example:
    >>> LoadReport(rows_read=3, examples=2, skipped={"invalid_json": 1}).to_dict()["skipped_total"]
    1
    """

    files: list = dataclasses.field(default_factory=list)
    rows_read: int = 0
    examples: int = 0
    skipped: dict = dataclasses.field(default_factory=dict)
    duplicates_removed: int = 0
    formats: dict = dataclasses.field(default_factory=dict)

    def to_dict(self):
        return dict(
            dataclasses.asdict(self),
            skipped=dict(sorted(self.skipped.items())),
            skipped_total=sum(self.skipped.values()),
        )


@dataclasses.dataclass
class TokenReport:
    """Token lengths of the formatted examples and what did not fit.

    Lengths are counted in token ids, BOS included, before truncation.

    Args:
        examples: int. Examples tokenized.
        kept: int. Examples left after dropping.
        truncated: int. Examples cut on the answer side to fit.
        dropped: int. Examples dropped because they did not fit.
        length_p50: float. Median length in tokens.
        length_p95: float. 95th percentile length.
        length_max: int. Longest example.
        loss_tokens: int. Target tokens that carry loss, over kept examples.

    Example:
    >>> TokenReport.from_lengths([3, 5, 9], truncated=1, dropped=0, loss_tokens=6).length_p50
    5.0
    """

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    length_p50: float = 0.0
    length_p95: float = 0.0
    length_max: int = 0
    loss_tokens: int = 0

    @classmethod
    def from_lengths(cls, lengths, truncated, dropped, loss_tokens):
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size == 0:
            return cls()
        return cls(
            examples=int(lengths.size),
            kept=int(lengths.size) - dropped,
            truncated=truncated,
            dropped=dropped,
            length_p50=round(float(np.percentile(lengths, 50)), 1),
            length_p95=round(float(np.percentile(lengths, 95)), 1),
            length_max=int(lengths.max()),
            loss_tokens=loss_tokens,
        )

    def to_dict(self):
        return dataclasses.asdict(self)
