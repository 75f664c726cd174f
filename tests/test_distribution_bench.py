"""`bench/multi_gpu.py --smoke` runs all three modes on 2 virtual CPU devices and writes its JSON."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

ROOT = str(REPO_ROOT)


@pytest.mark.slow
def test_multi_gpu_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "multi_gpu.py"), "--smoke", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    results = json.loads(out.read_text())["results"]
    assert [r["mode"] for r in results] == ["single", "data", "model"]
    assert [r["mesh"] for r in results] == [[1, 1], [2, 1], [1, 2]]
    assert all(r["tokens_per_second"] > 0 and r["device_count"] == 2 for r in results)
    # Same seed and rows per replica: the first loss of one device equals model parallel's.
    assert abs(results[0]["losses"][0] - results[2]["losses"][0]) < 1e-4
