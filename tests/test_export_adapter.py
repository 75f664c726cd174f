"""PEFT adapter export: base folder + adapter match the Keras LoRA model."""

import os

import pytest
from helpers import ALL_LINEAR, CASES, export_and_verify_adapter, lora_model

from kerasgemma.export import export_merged, verify_export
from kerasgemma.export.adapter import export_adapter


@pytest.mark.parametrize("case", sorted(CASES))
def test_adapter_matches_keras(case, tmp_path):
    lm = lora_model(**CASES[case])
    config = export_and_verify_adapter(lm, tmp_path, max_new_tokens=12)
    targets = CASES[case].get("targets")
    expected = {"q_proj", "v_proj"} if targets is None else {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }
    assert set(config["target_modules"]) == expected
    assert config["r"] * 1.0 / config["lora_alpha"] == 1.0  # alpha = rank in Keras
    # Megabytes, not gigabytes: far smaller than the base weights.
    assert os.path.getsize(tmp_path / "adapter" / "adapter_model.safetensors") < 200_000


def test_adapter_on_wrong_base_fails(tmp_path):
    """A merged folder used as base double-applies LoRA; verify must catch it."""
    lm = lora_model("gemma", targets=ALL_LINEAR)
    merged = export_merged(lm, tmp_path / "merged", dtype="float32")
    adapter = export_adapter(lm, tmp_path / "adapter", base_model_name_or_path=merged)
    report = verify_export(lm, adapter, base_dir=merged, max_new_tokens=4)
    assert not report.passed
