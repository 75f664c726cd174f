"""Multimodal export: Gemma 4 (vision + audio) and Gemma 3 (vision) as *ForConditionalGeneration.

The tiny models are `tiny:gemma4-vision-audio` and `tiny:gemma3-vision`
(the `gemma4` / `gemma3` text parts with tiny towers, kerasgemma.tiny).
LoRA is on every text projection with random non-zero A and B, so a
dropped LoRA shows; the towers have no LoRA and must come out unchanged.
"""

import json
import os

import numpy as np
import pytest
from helpers import ALL_LINEAR, lora_model

from kerasgemma.export import export_merged, verify_export
from kerasgemma.export.hf_config import hf_config
from kerasgemma.export.weights import hf_tensor_shapes
from kerasgemma.tiny import build_tiny_causal_lm

GEMMA4 = "gemma4-vision-audio"
GEMMA3 = "gemma3-vision"


def check_merged(architecture, tmp_path, max_new_tokens):
    lm = lora_model(architecture, num_layers=4 if architecture == GEMMA4 else 2, targets=ALL_LINEAR)
    folder = export_merged(lm, tmp_path / "hf", dtype="bfloat16", max_shard_size="40KB")
    report = verify_export(lm, folder, max_new_tokens=max_new_tokens, check_mlx=architecture == GEMMA4)
    print(report.summary())
    assert report.passed and report.weights_bit_exact, report.summary()
    assert report.max_abs_logits_diff < 1e-4
    assert all(check.greedy_match and check.hf_greedy for check in report.prompts)
    assert report.rounded_max_abs_logits_diff > report.max_abs_logits_diff  # bfloat16 rounding shows
    towers = {"vision", "audio"} if architecture == GEMMA4 else {"vision"}
    assert set(report.tower_max_abs_diff) == towers
    assert max(report.tower_max_abs_diff.values()) < 1e-5
    written = json.load(open(os.path.join(folder, "verification.json")))
    assert written["passed"] and set(written["tower_max_abs_diff"]) == towers
    return lm, folder, report


def stored_tensor(folder, name):
    from safetensors import safe_open

    from kerasgemma.export.safetensors_io import read_weight_map

    with safe_open(os.path.join(folder, read_weight_map(folder)[name]), framework="pt") as handle:
        return handle.get_tensor(name).float().numpy()


@pytest.mark.slow
def test_gemma4_vision_audio_merged_matches_keras(tmp_path):
    lm, folder, report = check_merged(GEMMA4, tmp_path, max_new_tokens=4)
    assert report.architecture == "Gemma4ForConditionalGeneration"
    assert report.mlx.startswith("greedy identical")
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["model_type"] == "gemma4" and config["text_config"]["model_type"] == "gemma4_text"
    assert config["text_config"]["rope_parameters"]["full_attention"]["rope_type"] == "proportional"
    tokenizer = lm.preprocessor.tokenizer
    assert config["image_token_id"] == tokenizer.token_to_id("<|image|>")
    assert config["audio_token_id"] == tokenizer.token_to_id("<|audio|>")
    # A tower tensor, read back, is the Keras weight (float32 here: bit for bit after bfloat16 rounding).
    vision = lm.backbone.vision_encoder.get_layer("vision_output_encoder").vision_input_projection
    stored = stored_tensor(folder, "model.embed_vision.embedding_projection.weight")
    np.testing.assert_array_equal(stored, np.asarray(vision.kernel, np.float32).T.astype("bfloat16").astype(np.float32))


def test_gemma3_vision_merged_matches_keras(tmp_path):
    lm, folder, report = check_merged(GEMMA3, tmp_path, max_new_tokens=8)
    assert report.architecture == "Gemma3ForConditionalGeneration"
    config = json.load(open(os.path.join(folder, "config.json")))
    assert (config["model_type"], config["text_config"]["model_type"]) == ("gemma3", "gemma3_text")
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    shapes = hf_tensor_shapes(lm.backbone)
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in shapes
    assert not any(name.startswith("model.layers.") for name in shapes)


@pytest.mark.slow
def test_tower_check_catches_a_changed_tower_weight(tmp_path):
    """The tower comparison can fail: one vision weight nudged in transformers shows."""
    import torch

    from kerasgemma.export.verify import _check_towers, _load_float32

    lm = build_tiny_causal_lm(GEMMA3)
    folder = export_merged(lm, tmp_path / "hf", dtype="float32")
    model = _load_float32(folder)
    failures = []
    assert max(_check_towers(lm.backbone, model, 1e-5, failures).values()) < 1e-5 and not failures
    # Random noise: a constant added to every weight of fc2 would shift all
    # channels alike, which the following LayerNorm removes (measured: |Δ| 2e-8).
    weight = model.model.vision_tower.encoder.layers[0].mlp.fc2.weight
    with torch.no_grad():
        weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    diffs = _check_towers(lm.backbone, model, 1e-5, failures)
    assert diffs["vision"] > 1e-4 and failures == [f"vision tower max |Δ| {diffs['vision']:.3g} > 1e-05"]


@pytest.mark.parametrize("architecture", [GEMMA3, pytest.param(GEMMA4, marks=pytest.mark.slow)])
def test_adapter_on_multimodal_base_matches_keras(architecture, tmp_path):
    import peft
    import torch
    import transformers

    from kerasgemma.export.adapter import export_adapter

    lm = lora_model(architecture, num_layers=4 if architecture == GEMMA4 else 2, targets=ALL_LINEAR)
    base = export_merged(lm, tmp_path / "base", dtype="bfloat16", merge_lora=False)
    adapter = export_adapter(lm, tmp_path / "adapter", base_model_name_or_path=base)
    report = verify_export(lm, adapter, base_dir=base, max_new_tokens=4)
    print(report.summary())
    assert report.passed and report.max_abs_logits_diff < 1e-4, report.summary()
    assert max(report.tower_max_abs_diff.values()) < 1e-5
    # PEFT puts LoRA on the language model's projections only, never on a tower's q_proj/k_proj/...
    config = json.load(open(os.path.join(base, "config.json")))
    model = getattr(transformers, config["architectures"][0]).from_pretrained(base, dtype=torch.float32)
    wrapped = peft.PeftModel.from_pretrained(model, adapter)
    wrapped_names = [name for name, module in wrapped.named_modules() if hasattr(module, "lora_A")]
    expected = sum(
        1 for layer in lm.backbone._flatten_layers() if getattr(layer, "lora_enabled", False)
    )
    assert len(wrapped_names) == expected
    assert all(".model.language_model.layers." in name for name in wrapped_names)


def test_text_only_backbone_still_exports_as_causal_lm():
    for architecture, class_name in [("gemma3", "Gemma3ForCausalLM"), ("gemma4", "Gemma4ForCausalLM")]:
        lm = build_tiny_causal_lm(architecture)
        config = hf_config(lm.backbone, lm.preprocessor.tokenizer)
        assert config["architectures"] == [class_name] and "text_config" not in config
        assert "model.embed_tokens.weight" in hf_tensor_shapes(lm.backbone)


def test_audio_tower_transformers_cannot_reproduce_is_refused(tmp_path):
    """transformers sizes the audio input projection from the conv channels, not the mel bins."""
    import keras_hub
    from keras_hub.src.models.gemma4.gemma4_audio_encoder import Gemma4AudioEncoder

    lm = build_tiny_causal_lm(GEMMA4)
    config = dict(lm.backbone.get_config())
    for key in ("name", "trainable", "dtype", "audio_encoder"):
        config.pop(key)
    config["vision_encoder"] = lm.backbone.vision_encoder
    audio = Gemma4AudioEncoder(
        input_feat_size=16, hidden_size=8, num_heads=2, num_layers=1, sscp_conv_channels=(8, 4),
        output_proj_dims=8, output_dim=config["hidden_dim"],
    )
    backbone = keras_hub.models.Gemma4Backbone(**config, audio_encoder=audio)
    odd = type(lm)(backbone=backbone, preprocessor=lm.preprocessor)
    with pytest.raises(ValueError, match="cannot be reproduced by transformers' Gemma4AudioModel"):
        export_merged(odd, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_convert_exports_a_multimodal_tiny_preset(tmp_path):
    import kerasgemma as kg

    done = kg.convert(f"tiny:{GEMMA3}", str(tmp_path / "hf"), dtype="float32", max_new_tokens=2,
                      check_mlx=False, progress=False, log=lambda line: None)
    assert done.passed
    config = json.load(open(tmp_path / "hf" / "config.json"))
    assert config["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert os.path.exists(tmp_path / "hf" / "README.md")
