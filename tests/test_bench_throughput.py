"""The throughput benchmark's CPU smoke mode runs, so the script cannot rot between GPU runs."""

import doctest
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT

ROOT = REPO_ROOT


@pytest.mark.slow
def test_train_throughput_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| tiny | kerasgemma |" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    arms = {row["arm"]: row for row in rows if row["model"] == "tiny"}
    assert [row["arm"] for row in rows if row["model"] == "tiny_gemma4"] == ["kerasgemma"]
    assert set(arms) == {"kerasgemma", "kerasgemma_reference_loss", "kerashub_fit_bf16", "hf_peft_eager"}
    for row in rows:
        assert row["useful_tokens_per_second"] > 0
    # Same data, same model, same seed: the fused loss is the reference loss.
    assert abs(arms["kerasgemma"]["loss"] - arms["kerasgemma_reference_loss"]["loss"]) < 1e-3
    # Packing: nearly every computed position is a real token; padding to 1024 wastes most.
    packed = arms["kerasgemma"]["useful_tokens"] / arms["kerasgemma"]["computed_tokens"]
    padded = arms["kerashub_fit_bf16"]["useful_tokens"] / arms["kerashub_fit_bf16"]["computed_tokens"]
    assert packed > 0.95 > 0.5 > padded


@pytest.mark.slow
def test_levers_smoke_with_kernel_summary(tmp_path):
    out = tmp_path / "levers.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "levers.py"), "--smoke", "--variants", "default", "causal_only",
         "--profile", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| default |" in done.stdout and "| causal_only |" in done.stdout
    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    # Without the segment mask examples see each other: a different loss.
    assert rows["default"]["loss"] != rows["causal_only"]["loss"]
    assert (tmp_path / "profile").is_dir()


def test_kernel_summary_groups_device_time():
    sys.path.insert(0, str(ROOT / "bench"))
    import levers

    assert levers.kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_bprop") == "attention"
    assert levers.kernel_kind("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT") == "matmul"
    assert levers.kernel_kind("loop_add_multiply_fusion_17") == "other fusion"


def test_trace_summary_reads_device_kernels_only(tmp_path):
    import gzip

    sys.path.insert(0, str(ROOT / "bench"))
    import levers

    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "name": "nvjet_sm90_gemm", "dur": 3000},
        {"ph": "X", "pid": 1, "name": "cudnn_flash_bprop", "dur": 1000},
        {"ph": "X", "pid": 2, "name": "python_host_work", "dur": 99000},
    ]
    (tmp_path / "run").mkdir()
    with gzip.open(tmp_path / "run" / "perfetto_trace.json.gz", "wt") as file:
        json.dump({"traceEvents": events}, file)
    summary = levers.summarize_trace(str(tmp_path), steps=2)
    assert "device time per step: 2.0 ms" in summary
    assert "matmul" in summary and "75.0%" in summary and "python_host_work" not in summary


@pytest.mark.slow
def test_memory_bench_smoke(tmp_path):
    out = tmp_path / "memory.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "memory.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| tiny | int8 | block | 128 |" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [row["row"] for row in rows] == ["tiny:bf16:none:128", "tiny:int8:block:128", "tiny_gemma4:int4:dots:128",
                                            "tiny:hf-bnb4:none:128"]
    for row in rows[:3]:
        assert row["useful_tokens"] > 0 and row["estimate_bytes"] > 0 and np.isfinite(row["loss"])
        assert row["host_peak_bytes"] > 0 and row["row_seconds"] > 0
    # No CUDA GPU here: the transformers + bitsandbytes arm says why it did not run.
    assert rows[3]["skipped"] == "transformers + bitsandbytes 4-bit needs a CUDA GPU"


def test_memory_bench_feeds_transformers_the_same_packed_rows():
    sys.path.insert(0, str(ROOT / "bench"))
    import memory

    assert doctest.testmod(memory).failed == 0
    # Every loss-weighted target of the packed batch is one of transformers' labels, one place later.
    batch = memory.packed_batches("tiny", 64, 2, 1)[0]
    inputs = memory.hf_packed(batch)
    weighted = batch["loss_weights"][:, :-1] > 0
    assert (inputs["labels"][:, 1:][weighted] == batch["target_ids"][:, :-1][weighted]).all()
    assert (inputs["labels"] != -100).sum() == weighted.sum()
    assert (inputs["position_ids"][batch["segment_ids"] > 0] < 64).all()
    assert set(inputs["position_ids"][:, 0]) == {0}
