"""Merged export: every architecture, LoRA non-zero, transformers parity."""

import json
import os

import numpy as np
import pytest

from kerasgemma.backend import ensure_jax_backend

ensure_jax_backend()

import keras_hub  # noqa: E402

from helpers import CASES, lora_model  # noqa: E402

from kerasgemma.export import export_merged, verify_export  # noqa: E402
from kerasgemma.tiny import build_tiny_causal_lm, tiny_backbone_config  # noqa: E402

@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_export_matches_keras(case, tmp_path):
    lm = lora_model(**CASES[case])
    folder = export_merged(lm, tmp_path / "hf", dtype="bfloat16", max_shard_size="40KB")
    report = verify_export(lm, folder, max_new_tokens=12)
    print(report.summary())
    assert report.passed, report.summary()
    assert report.max_abs_logits_diff < 1e-4
    assert report.weights_bit_exact
    assert all(len(check.hf_greedy) > 0 for check in report.prompts)
    # bfloat16 rounding alone moves the logits far more than the conversion.
    assert report.rounded_max_abs_logits_diff > report.max_abs_logits_diff
    assert json.load(open(os.path.join(folder, "verification.json")))["passed"]
    if CASES[case]["architecture"] == "gemma3":
        assert report.mlx.startswith("greedy identical")


def test_config_round_trips_through_keras_hub(tmp_path):
    lm = lora_model("gemma3", num_layers=6)
    folder = export_merged(lm, tmp_path / "hf", dtype="float32")
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert (config["bos_token_id"], config["eos_token_id"]) == (2, 1)
    assert config["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    reloaded = keras_hub.models.Gemma3Backbone.from_preset(str(folder))
    assert reloaded.num_key_value_heads == lm.backbone.num_key_value_heads
    assert reloaded.sliding_window_size == lm.backbone.sliding_window_size


def test_sharding_writes_index_and_single_file(tmp_path):
    lm = build_tiny_causal_lm("gemma")
    sharded = export_merged(lm, tmp_path / "a", dtype="float32", max_shard_size="30KB")
    index = json.load(open(os.path.join(sharded, "model.safetensors.index.json")))
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all(os.path.exists(os.path.join(sharded, f)) for f in files)
    single = export_merged(lm, tmp_path / "b", dtype="float32")
    assert "model.safetensors" in os.listdir(single)
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))


@pytest.mark.slow
def test_mlx_tokens_that_are_not_transformers_greedy_fail(tmp_path, monkeypatch):
    """The mlx-lm check is transformers' argmax along mlx-lm's tokens: one changed token fails it."""
    import kerasgemma.export.verify as verify

    def one_token_off(*args, **kwargs):
        tokens = mlx_greedy(*args, **kwargs)
        return [t[:-1] + [(t[-1] + 1) % 256] for t in tokens]

    from kerasgemma.export.mlx_check import mlx_greedy

    lm = lora_model("gemma3", num_layers=6)
    folder = export_merged(lm, tmp_path / "hf", dtype="float32")
    assert verify_export(lm, folder, max_new_tokens=4).mlx.startswith("greedy identical")
    monkeypatch.setattr(verify, "mlx_greedy", one_token_off)
    report = verify_export(lm, folder, max_new_tokens=4)
    assert not report.passed and report.mlx.startswith("greedy DIFFERS")
    assert "mlx-lm greedy tokens differ from transformers'" in report.failures


def test_keras_hub_exporter_fails_our_verification(tmp_path):
    """keras-hub 0.32's own exporter drops LoRA (docs/facts.md#keras-hub-exporter); verify catches it."""
    lm = lora_model("gemma")
    folder = tmp_path / "keras_hub_export"
    lm.export_to_transformers(str(folder))
    report = verify_export(lm, str(folder), max_new_tokens=4, check_mlx=False)
    print(report.summary())
    assert not report.passed
    assert not report.weights_bit_exact
    assert report.max_abs_logits_diff > 1e-2


def test_unsupported_backbone_is_refused(tmp_path):
    lm = build_tiny_causal_lm("gemma")
    config = dict(tiny_backbone_config("gemma", lm.backbone.vocabulary_size),
                  final_logit_soft_cap=30.0)
    lm = type(lm)(backbone=type(lm.backbone)(**config), preprocessor=lm.preprocessor)
    with pytest.raises(ValueError, match="neither Gemma 1 nor Gemma 2"):
        export_merged(lm, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_bfloat16_keras_model_is_checked_against_float32(tmp_path):
    """A bfloat16 Keras model computes in bfloat16 (~1e-2 from float32); the check uses a float32 copy."""
    lm = build_tiny_causal_lm("gemma3", dtype="bfloat16")
    lm.backbone.enable_lora(2)
    rng = np.random.default_rng(0)
    for layer in lm.backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_kernel_b.assign(rng.normal(0, 0.3, layer.lora_kernel_b.shape))
    folder = export_merged(lm, tmp_path / "hf", dtype="bfloat16")
    report = verify_export(lm, folder, max_new_tokens=8, check_mlx=False)
    assert report.passed, report.summary()
    assert report.weights_bit_exact and report.max_abs_logits_diff < 1e-4
    assert report.reference.startswith("float32 copy")
