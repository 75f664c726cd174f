"""Quantized base weights (`TrainConfig.quantize`): train, checkpoint, resume exactly, export, verify."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kerasgemma import run as run_module
from kerasgemma.export.quantized import TRAINED_MODEL_ATOL
from kerasgemma.export.quantized import logits_distance
from kerasgemma.forward import token_losses
from kerasgemma.model import enable_lora
from kerasgemma.model import load_causal_lm
from kerasgemma.quantization import dequantized_copy
from kerasgemma.quantization import float_kernel
from kerasgemma.quantization import quantization_mode
from kerasgemma.quantization import quantize_base
from kerasgemma.training import checkpoint
from helpers import losses, tiny_config


@pytest.mark.slow
@pytest.mark.parametrize("architecture,mode", [("gemma", "int8"), ("gemma3", "int4"), ("gemma4", "int8")])
def test_dequantized_copy_computes_what_the_quantized_model_computes(architecture, mode):
    lm = load_causal_lm(f"tiny:{architecture}")
    float_lm = load_causal_lm(f"tiny:{architecture}")
    quantize_base(lm, mode)
    enable_lora(lm, rank=2)
    rng = np.random.default_rng(0)
    for variable in lm.trainable_variables:
        variable.assign(rng.normal(scale=0.1, size=variable.shape).astype("float32"))
    copy = dequantized_copy(lm)
    assert quantization_mode(lm) == mode and quantization_mode(copy) is None
    assert [v.path for v in copy.trainable_variables] == [v.path for v in lm.trainable_variables]
    # Gemma 4's MLP reads `.kernel` directly: without the dequantizing kernel
    # this was 0.26 (int8) / 0.43 (int4) on the tiny Gemma 4.
    batch = {"token_ids": np.array([[2, 10, 11, 12, 13]]), "target_ids": np.array([[10, 11, 12, 13, 1]]),
             "segment_ids": np.ones((1, 5), int)}
    assert np.max(np.abs(token_losses(lm, batch) - token_losses(copy, batch))) <= TRAINED_MODEL_ATOL
    # The base really is quantized: its kernels differ from the float ones.
    query = lm.backbone.transformer_layers[0].attention.query_dense
    original = float_lm.backbone.transformer_layers[0].attention.query_dense.kernel
    error = np.max(np.abs(float_kernel(query) - np.asarray(original)))
    assert 0 < error < 0.2 * np.max(np.abs(np.asarray(original)))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_run_resumes_exactly_and_exports_the_trained_model(tmp_path, mode):
    config = tiny_config(tmp_path, quantize=mode, max_steps=4, eval_every=2, save_every=2)
    run = run_module.train(config, progress=False)
    assert quantization_mode(run.causal_lm) == mode
    assert {str(v.dtype) for v in run.causal_lm.trainable_variables} == {"float32"}
    first = losses(run.run_dir)
    lora = [np.asarray(v.value) for v in run.causal_lm.trainable_variables]
    # Lose the last checkpoint: the resume rebuilds the quantized base from the
    # preset, restores LoRA + optimizer at step 2 and runs steps 3-4 again.
    shutil.rmtree(checkpoint.latest_checkpoint(run.run_dir))
    resumed = run_module.resume(run.run_dir, progress=False)
    assert losses(run.run_dir) == first
    for before, after in zip(lora, resumed.causal_lm.trainable_variables):
        np.testing.assert_array_equal(before, np.asarray(after.value))

    folder, report = resumed.export(tmp_path / "merged", max_new_tokens=2, check_mlx=False, progress=False,
                                    log=lambda _: None)
    assert report.passed, report.failures
    assert report.quantized_base == mode
    assert report.trained_model_max_abs_logits_diff <= TRAINED_MODEL_ATOL
    assert json.loads((Path(folder) / "verification.json").read_text())["quantized_base"] == mode
    assert f"{mode}-quantized while training" in (Path(folder) / "README.md").read_text()

    adapter, adapter_report = resumed.export(tmp_path / "adapter", adapter_only=True, max_new_tokens=2,
                                             progress=False, log=lambda _: None)
    assert adapter_report.passed, adapter_report.failures
    assert "trained on, and verified against, that quantized base" in (Path(adapter) / "README.md").read_text()

    # The float base + the same LoRA is another model: the base's quantization
    # error, far above the conversion's.
    float_lm = run_module.build_model(dataclasses.replace(config, quantize=None), resumed.data.examples.texts())
    for target, value in zip(float_lm.trainable_variables, resumed.causal_lm.trainable_variables):
        target.assign(value.value)
    distance = logits_distance(float_lm, resumed.causal_lm)
    print(f"{mode}: quantized model vs float base + LoRA max |Δlogits| {distance:.3g}")
    assert distance > 100 * report.max_abs_logits_diff
