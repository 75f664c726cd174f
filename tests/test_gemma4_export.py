"""Gemma 4 export: merged folder, PEFT adapter, convert script, chat template.

Two tiny models cover every text feature: `gemma4` (sliding/global layers,
per-layer embeddings, KV shared by the last two layers with a 2x MLP, global
heads twice as wide with RoPE on a quarter) and `gemma4-moe` (K=V global
layers with fewer KV heads, MoE beside the dense MLP). LoRA is on every
projection with random non-zero A and B, so a dropped LoRA shows.
"""

import importlib.util
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file
from helpers import ALL_LINEAR, REPO_ROOT, export_and_verify_adapter, lora_model

from kerasgemma.data.chat_format import format_chat
from kerasgemma.export import export_merged, verify_export
from kerasgemma.tiny import build_tiny_causal_lm

PLE = ["per_layer_input_gate", "per_layer_up_proj"]


@pytest.fixture(scope="module", params=["gemma4", "gemma4-moe"])
def lm(request):
    return lora_model(request.param, num_layers=4, targets=ALL_LINEAR + PLE)


def test_merged_matches_transformers(lm, tmp_path):
    folder = export_merged(lm, tmp_path / "hf", dtype="bfloat16")
    report = verify_export(lm, folder, max_new_tokens=4, check_mlx=True)
    print(report.summary())
    assert report.passed and report.weights_bit_exact, report.summary()
    assert report.max_abs_logits_diff < 1e-4
    assert all(check.greedy_match for check in report.prompts)
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["model_type"] == "gemma4_text"
    assert config["rope_parameters"]["full_attention"]["rope_type"] == "proportional"
    assert config["attention_k_eq_v"] == lm.backbone.enable_moe_block  # the moe model has K=V
    tokenizer = lm.preprocessor.tokenizer
    generation = json.load(open(os.path.join(folder, "generation_config.json")))
    assert generation["eos_token_id"] == [
        1, tokenizer.token_to_id("<turn|>"), tokenizer.token_to_id("<|tool_response>")
    ]


@pytest.mark.slow
def test_adapter_matches_transformers(lm, tmp_path):
    config = export_and_verify_adapter(lm, tmp_path, max_new_tokens=4)
    assert {"q_proj", "k_proj", "o_proj", "down_proj"} <= set(config["target_modules"])


def test_chat_template_renders_gemma4_turns(tmp_path):
    import transformers

    lm = lora_model("gemma4", num_layers=4)
    folder = export_merged(lm, tmp_path / "hf", dtype="float32")
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [
        {"role": "system", "content": "Answer in Chinese."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "你好"},
        {"role": "user", "content": "1+1?"},
    ]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><|turn>system\nAnswer in Chinese.<turn|>\n<|turn>user\nHi<turn|>\n"
        "<|turn>model\n你好<turn|>\n<|turn>user\n1+1?<turn|>\n<|turn>model\n"
    )
    thinking = hf.apply_chat_template(messages[1:2], tokenize=False, enable_thinking=True)
    assert thinking.startswith("<bos><|turn>system\n<|think|>\n<turn|>\n")
    # The exported template is the training formatter's text, BOS aside.
    trained = format_chat(messages, template="gemma4", add_generation_prompt=True).text
    assert text == "<bos>" + trained
    # The rendered turns tokenize to the Keras ids (markers are single tokens).
    keras_ids = [2] + [int(t) for t in lm.preprocessor.tokenizer(text[len("<bos>"):])]
    assert hf(text, add_special_tokens=False)["input_ids"] == keras_ids


@pytest.mark.slow
def test_convert_script_with_keras_hub_lora_file(tmp_path):
    """A preset folder + a `.lora.h5` written by keras-hub itself."""
    lm = build_tiny_causal_lm("gemma4")
    preset = str(tmp_path / "preset")
    lm.save_to_preset(preset)
    lm.backbone.enable_lora(2)
    rng = np.random.default_rng(1)
    for layer in lm.backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_kernel_b.assign(rng.normal(0, 0.3, layer.lora_kernel_b.shape))
    lora_file = str(tmp_path / "x.lora.h5")
    lm.backbone.save_lora_weights(lora_file)
    spec = importlib.util.spec_from_file_location("convert_to_hf", REPO_ROOT / "export" / "convert_to_hf.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "hf"
    assert script.main([preset, str(out), "--lora", lora_file, "--max-new-tokens", "2",
                        "--no-mlx", "--no-progress", "--dtype", "float32"]) == 0
    report = json.load(open(out / "verification.json"))
    assert report["passed"] and report["max_abs_logits_diff"] < 1e-4
    # The exported q_proj carries the LoRA update, not the frozen base.
    q = load_file(str(out / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    base = np.asarray(lm.backbone.get_layer("decoder_block_0").attention.query_dense._kernel)
    assert not np.allclose(q, base.transpose(0, 2, 1).reshape(-1, base.shape[1]))
