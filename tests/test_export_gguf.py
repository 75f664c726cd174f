"""GGUF export: tiny Gemma / Gemma 2 / Gemma 3 with non-zero LoRA, written, read back, compared with Keras."""

import json
import os

import numpy as np
import pytest

from kerasgemma.backend import ensure_jax_backend

ensure_jax_backend()

from helpers import ALL_LINEAR, lora_model, parse_subcommand  # noqa: E402

import kerasgemma as kg  # noqa: E402
from kerasgemma.commands import export as export_command  # noqa: E402
from kerasgemma.errors import UserError  # noqa: E402
from kerasgemma.export import export_merged, hf_config  # noqa: E402
from kerasgemma.export.gguf_verify import GGUF_ATOL, verify_gguf  # noqa: E402
from kerasgemma.export.gguf_writer import write_gguf  # noqa: E402
from kerasgemma.hub import model_card  # noqa: E402
from kerasgemma.tiny import build_tiny_causal_lm  # noqa: E402


def _lora(architecture):
    # Two KV heads and LoRA on every projection: a dropped LoRA, a wrong
    # head layout or a missing 1 + w norm shift all move the logits.
    return lora_model(architecture, num_key_value_heads=2, targets=ALL_LINEAR)


def _check(report, gguf_type):
    print(report.summary())
    assert report.passed, report.summary()
    assert report.tensors_match and report.tokenizer_match
    # Keras holds the GGUF's own weights: float32 round-off and the same greedy tokens, for every type.
    assert report.max_abs_logits_diff <= GGUF_ATOL[gguf_type] and report.greedy_match
    assert all(len(check.hf_greedy) > 0 for check in report.prompts)
    if gguf_type != "f32":
        # The unrounded model is further away by the type's rounding (information, measured and
        # reported): had the reference kept the unrounded weights, the two figures would be equal.
        assert report.rounded_max_abs_logits_diff > 10 * report.max_abs_logits_diff


@pytest.mark.parametrize(
    "architecture",
    [pytest.param(a, marks=pytest.mark.slow) for a in ("gemma", "gemma2", "gemma3")],
)
def test_f16_gguf_round_trips(architecture, tmp_path):
    lm = _lora(architecture)
    path, report = kg.export_gguf(lm, tmp_path / "gguf", gguf_type="f16", max_new_tokens=12, log=lambda _: None)
    _check(report, "f16")
    assert sorted(os.listdir(tmp_path / "gguf")) == [".kerasgemma-export", "Modelfile", "model-F16.gguf",
                                                     "verification.json"]
    assert json.load(open(tmp_path / "gguf" / "verification.json"))["gguf_file"] == path
    modelfile = (tmp_path / "gguf" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-F16.gguf\n")
    assert 'PARAMETER stop "<end_of_turn>"' in modelfile and "<start_of_turn>model" in modelfile
    # Nothing is left beside the folder (the float32 scratch is deleted).
    assert os.listdir(tmp_path) == ["gguf"]


@pytest.mark.slow
@pytest.mark.parametrize("gguf_type", ["f32", "bf16", "q8_0"])
def test_other_types_round_trip(gguf_type, tmp_path):
    lm = _lora("gemma2")
    folder = export_merged(lm, tmp_path / "hf", dtype="float32")
    write_gguf(folder, tmp_path / "m.gguf", gguf_type)
    report = verify_gguf(lm, str(tmp_path / "m.gguf"), folder, gguf_type, max_new_tokens=12)
    _check(report, gguf_type)
    if gguf_type == "f32":
        # No rounding at all: both references hold the same weights.
        assert report.rounded_max_abs_logits_diff == report.max_abs_logits_diff < 1e-5


def test_special_ids_without_tokenizer_json(tmp_path):
    """The real 270M's folder has no tokenizer.json: bos/eos/unk/pad ids still reach the GGUF."""
    import gguf

    lm = build_tiny_causal_lm("gemma3")
    folder = export_merged(lm, tmp_path / "hf", dtype="float32")
    os.remove(os.path.join(folder, "tokenizer.json"))
    write_gguf(folder, tmp_path / "m.gguf", "f32")
    fields = gguf.GGUFReader(tmp_path / "m.gguf").fields
    tokenizer = lm.preprocessor.tokenizer
    ids = {kind: int(fields[f"tokenizer.ggml.{key}_token_id"].contents())
           for kind, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))}
    assert ids == {kind: tokenizer.token_to_id(f"<{kind}>") for kind in ids}


def test_wrong_model_fails_verification(tmp_path):
    """The checks can fail: the GGUF against the model without its LoRA (tensors), read with another config (logits)."""
    lm = _lora("gemma")
    folder = export_merged(lm, tmp_path / "hf", dtype="float32")
    write_gguf(folder, tmp_path / "m.gguf", "f16")
    for layer in lm.backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_kernel_b.assign(np.zeros(layer.lora_kernel_b.shape))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(config, rms_norm_eps=0.5)))
    report = verify_gguf(lm, str(tmp_path / "m.gguf"), folder, "f16", max_new_tokens=2)
    print(report.summary())
    assert not report.passed and not report.tensors_match
    # transformers runs the GGUF with another epsilon than Keras: the logits check catches it.
    assert report.max_abs_logits_diff > GGUF_ATOL["f16"]
    assert any(failure.startswith("max |Δlogits|") for failure in report.failures)


@pytest.mark.slow
def test_gemma4_is_refused_in_one_line(tmp_path):
    args = parse_subcommand(export_command, "export", ["tiny:gemma4", str(tmp_path / "out"), "--format", "gguf",
                                                      "--no-progress"])
    with pytest.raises(UserError, match="gguf 0.19 names the gemma4 architecture") as error:
        export_command.run(args, log=lambda _: None)
    assert "\n" not in str(error.value)
    assert os.listdir(tmp_path) == []


def test_cli_flags_reach_the_gguf_export():
    args = parse_subcommand(export_command, "export", ["runs/x", "out", "--format", "gguf", "--gguf-type", "q8_0"])
    assert (args.format, args.gguf_type, args.atol) == ("gguf", "q8_0", None)
    with pytest.raises(UserError, match="drop --adapter-only"):
        kg.convert("tiny:gemma", "out", format="gguf", adapter_only=True)


@pytest.mark.parametrize("architecture", ["gemma", "gemma2", "gemma3", "gemma4"])
def test_architectures_resolve_in_transformers_auto_mapping(architecture):
    """vLLM and SGLang select the model class by config.json's architectures[0]."""
    from transformers.models.auto import modeling_auto

    lm = build_tiny_causal_lm(architecture)
    config = hf_config(lm.backbone, lm.preprocessor.tokenizer)
    mappings = (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    assert any(mapping.get(config["model_type"]) == config["architectures"][0] for mapping in mappings)


def test_model_card_says_how_to_serve(tmp_path):
    card = model_card(str(tmp_path), "google/gemma-3-270m", repo_id="me/gemma-zh")
    serve = card.split("## Serve it\n", 1)[1]
    assert "vllm serve me/gemma-zh" in serve and "--format gguf" in serve and "ollama create" in serve
