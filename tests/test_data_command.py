"""`kerasgemma data` over a few thousand synthetic rows, some bad: counts and speed."""

import json
import time

import numpy as np

from helpers import parse_subcommand

from kerasgemma import cli
from kerasgemma.commands import data as command


def parse(argv):
    return parse_subcommand(command, "data", argv)


HANZI = list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学")


def write_synthetic(path, rows=3000, seed=0):
    """HC3-like rows with known numbers of bad rows, duplicates and blank lines."""
    rng = np.random.default_rng(seed)
    lines, last_good = [], None
    expected = {"rows": 0, "skipped": {}, "duplicates": 0, "examples": 0}
    bad = {
        "invalid_json": '{"question": "坏',
        "wrong_type": '{"question": "问", "human_answers": "不是列表"}',
        "empty_question": '{"question": " ", "human_answers": ["答"]}',
        "no_usable_answer": '{"question": "问", "human_answers": ["  "]}',
        "not_an_object": "[1, 2]",
    }
    for i in range(rows):
        kind = list(bad)[i % 50] if i % 50 < len(bad) else None
        if kind:
            lines.append(bad[kind])
            expected["skipped"][kind] = expected["skipped"].get(kind, 0) + 1
        elif i % 97 == 0 and last_good:
            lines.append(last_good)
            expected["duplicates"] += 1
        else:
            # Varied characters, so a tokenizer trained on the rows cannot
            # merge an answer into a few pieces: lengths stay HC3-like.
            answer = "".join(rng.choice(HANZI, size=int(rng.lognormal(np.log(40), 0.8)))) + f"第{i}个。"
            row = {"id": i, "question": f"第{i}个问题是什么？", "human_answers": [answer], "chatgpt_answers": ["x"]}
            last_good = json.dumps(row, ensure_ascii=False)
            lines.append(last_good)
            expected["examples"] += 1
        expected["rows"] += 1
        if i % 400 == 0:
            lines.append("")  # Blank lines are not rows.
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return expected


def test_summary_of_3000_rows_counts_everything_in_seconds(tmp_path, capsys):
    path = tmp_path / "baike.jsonl"
    expected = write_synthetic(path)
    start = time.perf_counter()
    code = command.run(parse([str(tmp_path), "--on-error", "skip", "--json", "--sequence-length", "256"]))
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    summary = json.loads(out[-1])
    assert summary["rows_read"] == expected["rows"] == 3000
    assert summary["skipped"] == expected["skipped"]
    assert summary["duplicates_removed"] == expected["duplicates"]
    assert summary["examples"] == expected["examples"]
    assert summary["train_examples"] + summary["validation_examples"] == expected["examples"]
    assert summary["length_p50"] <= summary["length_p95"] <= summary["length_max"]
    assert summary["truncated"] > 0 and summary["dropped"] == 0
    assert summary["non_padding_fraction"] > 0.9 > summary["non_padding_fraction_if_padded"]
    assert any(line.startswith("rows read") or "rows read" in line for line in out[:-1])
    print(f"{seconds:.1f} s")
    assert seconds < 30  # Seconds on a 2-core CPU; the bound is loose for shared machines.


def test_bad_row_exits_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "问", "human_answers": ["答"]}\n{"question": 1}\n')
    assert cli.main(["data", str(path)]) == 2
    assert f"{path}:2: 'question' must be a string" in capsys.readouterr().err


def test_missing_file_exits_cleanly(tmp_path, capsys):
    assert cli.main(["data", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
