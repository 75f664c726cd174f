"""The throughput benchmark's CPU smoke mode runs, so the script cannot rot between GPU runs."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    arms = {row["arm"]: row for row in rows}
    assert set(arms) == {"kerasgemma", "kerasgemma_reference_loss", "kerashub_fit_bf16", "hf_peft_eager"}
    for row in rows:
        assert row["useful_tokens_per_second"] > 0
    # Same data, same model, same seed: the fused loss is the reference loss.
    assert abs(arms["kerasgemma"]["loss"] - arms["kerasgemma_reference_loss"]["loss"]) < 1e-3
    # Packing: nearly every computed position is a real token; padding to 1024 wastes most.
    packed = arms["kerasgemma"]["useful_tokens"] / arms["kerasgemma"]["computed_tokens"]
    padded = arms["kerashub_fit_bf16"]["useful_tokens"] / arms["kerashub_fit_bf16"]["computed_tokens"]
    assert packed > 0.95 > 0.5 > padded
