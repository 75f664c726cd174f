"""export/convert_to_hf.py (= `kerasgemma export`) on saved checkpoints of a tiny Gemma 3.

Inputs: a run folder (lora.json + adapter.lora.h5), a preset folder plus a
`.lora.h5`, a preset folder plus a `.weights.h5`; outputs: merged folder,
PEFT adapter; verification; push to a local Hub stand-in.
"""

import importlib.util
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT, TOKEN, HubStandIn

from kerasgemma.model import enable_lora
from kerasgemma.tiny import build_tiny_causal_lm

ROOT = str(REPO_ROOT)
SCRIPT = os.path.join(ROOT, "export", "convert_to_hf.py")
LORA = {"rank": 2, "alpha": 4, "targets": ["query", "value"]}


def _script():
    spec = importlib.util.spec_from_file_location("convert_to_hf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A preset folder, a run folder trained on it, a bare .lora.h5, a full .weights.h5."""
    root = tmp_path_factory.mktemp("saved")
    lm = build_tiny_causal_lm("gemma3")
    preset = str(root / "preset")
    lm.save_to_preset(preset)
    enable_lora(lm, LORA["rank"], LORA["alpha"], LORA["targets"])
    rng = np.random.default_rng(0)
    for layer in lm.backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_kernel_b.assign(rng.normal(0, 0.3, layer.lora_kernel_b.shape))
    run = root / "run"
    run.mkdir()
    lm.backbone.save_lora_weights(str(run / "adapter.lora.h5"))
    (run / "lora.json").write_text(json.dumps({"preset": preset, **LORA}))
    (run / "config.json").write_text(json.dumps({"data": "hc3_baike_sample.jsonl", "learning_rate": 1e-3}))
    (run / "metrics.jsonl").write_text('{"step": 1, "tokens": 50, "train_loss": 6.5}\n'
                                       '{"step": 2, "tokens": 50, "train_loss": 6.1, "val_loss": 6.2}\n')
    bare = root / "bare"
    bare.mkdir()
    lm.backbone.save_lora_weights(str(bare / "x.lora.h5"))
    lm.save_weights(str(root / "full.weights.h5"))
    return {"root": root, "preset": preset, "run": str(run), "bare_lora": str(bare / "x.lora.h5"),
            "weights": str(root / "full.weights.h5")}


def _tensors(folder):
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def _all_text(folder):
    chunks = []
    for directory, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                chunks.append(f.read())
    return b"".join(chunks)


def test_help_is_complete(monkeypatch, capsys):
    # The script itself, run as `__main__` in this process (its imports are loaded already; the
    # subprocess test below runs it as a user does).
    monkeypatch.setattr(sys, "argv", [SCRIPT, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(SCRIPT, run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--dtype", "--max-shard-size", "--adapter-only", "--no-verify", "--push", "--public",
                 "--force-push", "--lora", "--weights", "--lora-rank", "--base-model", "python export/convert_to_hf.py"):
        assert flag in out, flag


@pytest.mark.slow
def test_run_folder_is_verified_and_pushed(saved, tmp_path):
    out = tmp_path / "hf"
    with HubStandIn() as standin:
        done = subprocess.run(
            [sys.executable, SCRIPT, saved["run"], str(out), "--push", "me/tiny-zh",
             "--hub-endpoint", standin.url, "--max-new-tokens", "4"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
            env=dict(os.environ, HF_TOKEN=TOKEN, KERAS_BACKEND="jax"),
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verification PASSED" in done.stdout and "writing:" in done.stderr  # report, progress bar
    # Fewer Gemma 3 layers than mlx-lm's sliding pattern: its limit, a skip, not a failure.
    assert "mlx-lm: skipped: mlx-lm's gemma3_text needs" in done.stdout
    files = standin.repos["me/tiny-zh"]["files"]
    assert standin.repos["me/tiny-zh"]["visibility"] == "private"
    assert {"README.md", "model.safetensors", "config.json", "verification.json", "tokenizer.model"} <= set(files)
    card = files["README.md"].decode()
    assert "hc3_baike_sample.jsonl" in card and "rank 2, alpha 4" in card and "train loss: 6.5000 → 6.1000" in card
    assert TOKEN not in done.stdout + done.stderr
    for folder in (out, saved["run"], tmp_path):
        assert TOKEN.encode() not in _all_text(folder)


def test_failed_verification_is_pushed_only_when_forced(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    script = _script()
    common = [saved["run"], str(tmp_path / "hf"), "--atol", "0", "--no-mlx", "--max-new-tokens", "2",
              "--no-progress", "--push", "me/bad"]
    with HubStandIn() as standin:
        assert script.main(common + ["--hub-endpoint", standin.url]) == 1
        assert standin.repos == {}
        assert script.main(common + ["--hub-endpoint", standin.url, "--force-push"]) == 1
        assert "model.safetensors" in standin.repos["me/bad"]["files"]
    output = capsys.readouterr()
    assert "verification FAILED" in output.out and TOKEN not in output.out + output.err


def test_every_input_gives_the_same_weights(saved, tmp_path):
    script = _script()
    flags = ["--dtype", "float32", "--no-verify", "--no-progress"]
    runs = {
        "run": [saved["run"]],
        "lora_with_flags": [saved["preset"], "--lora", saved["bare_lora"], "--lora-alpha", "4",
                            "--lora-targets", "query,value"],
        "weights": [saved["preset"], "--weights", saved["weights"]],
    }
    tensors = {}
    for name, source in runs.items():
        assert script.main(source[:1] + [str(tmp_path / name)] + source[1:] + flags) == 0
        tensors[name] = _tensors(tmp_path / name)
    base = _tensors(_export_base(saved, tmp_path))
    for name in ("lora_with_flags", "weights"):
        assert tensors[name].keys() == tensors["run"].keys()
        for key, value in tensors["run"].items():
            np.testing.assert_allclose(tensors[name][key], value, atol=1e-6, err_msg=f"{name}: {key}")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert np.abs(tensors["run"][q] - base[q]).max() > 1e-3  # LoRA really merged


def _export_base(saved, tmp_path):
    assert _script().main([saved["preset"], str(tmp_path / "base"), "--dtype", "float32", "--no-verify",
                           "--no-progress"]) == 0
    return tmp_path / "base"


def test_adapter_only(saved, tmp_path):
    out = tmp_path / "adapter"
    code = _script().main([saved["run"], str(out), "--adapter-only", "--base-model", "google/gemma-3-270m",
                           "--max-new-tokens", "4", "--no-progress"])
    assert code == 0
    config = json.load(open(out / "adapter_config.json"))
    assert config["base_model_name_or_path"] == "google/gemma-3-270m"
    assert json.load(open(out / "verification.json"))["passed"]
    assert "base_model: google/gemma-3-270m" in (out / "README.md").read_text()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # scratch base removed


def test_lora_targets_group_names_work_for_export_as_for_training(tmp_path):
    """`--lora-targets attention` means the same layers as `lora_targets: attention` in training.

    It used to raise: the export split the flag on commas and passed "attention" as a layer name.
    """
    lm = build_tiny_causal_lm("gemma3")
    preset = str(tmp_path / "preset")
    lm.save_to_preset(preset)
    enable_lora(lm, 2, 4, "attention")
    rng = np.random.default_rng(1)
    for layer in lm.backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_kernel_b.assign(rng.normal(0, 0.3, layer.lora_kernel_b.shape))
    lora_file = tmp_path / "attention.lora.h5"
    lm.backbone.save_lora_weights(str(lora_file))
    out = tmp_path / "hf"
    code = _script().main([preset, str(out), "--lora", str(lora_file), "--lora-rank", "2", "--lora-alpha", "4",
                           "--lora-targets", "attention", "--dtype", "float32", "--max-new-tokens", "2",
                           "--no-mlx", "--no-progress"])
    assert code == 0
    report = json.loads((out / "verification.json").read_text())
    assert report["passed"] and report["max_abs_logits_diff"] < 1e-4
    card = (out / "README.md").read_text()
    assert "on query, key, value, attention_output" in card
