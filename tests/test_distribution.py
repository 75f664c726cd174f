"""Strategy choice, sizing, layout rules and errors, on the suite's single device (docstring examples on eight too)."""

import os
import re
import subprocess
import sys

import keras
import pytest

from kerasgemma import distribution
from kerasgemma.distribution import DeviceInfo, DistributionError, choose_strategy
from kerasgemma.distribution import devices as devices_module
from kerasgemma.distribution import layout as layout_module
from kerasgemma.distribution import sizing, strategy
from kerasgemma.model import enable_lora
from kerasgemma.tiny import build_tiny_causal_lm, tiny_backbone_config

# Sizing and layout maps cover Gemma 1–3; the tiny Gemma 4 models
# (kerasgemma.tiny.ARCHITECTURES) have neither yet (issue 16).
ARCHITECTURES = ("gemma", "gemma2", "gemma3")

GiB = 2**30
TPU_V3_8 = DeviceInfo("tpu", 8, 16 * GiB, "TPU v3")
TWO_H100 = DeviceInfo("gpu", 2, 80 * GiB, "NVIDIA H100 80GB HBM3")


DOCTEST_MODULES = [distribution, devices_module, layout_module, sizing, strategy]


@pytest.mark.slow
def test_docstring_examples_hold_on_eight_devices():
    """The examples (run on this one device by test_doctests.py) hold on a TPU v3-8-like host too."""
    names = [module.__name__ for module in DOCTEST_MODULES]
    script = (
        "import doctest, importlib, sys\n"
        "import jax\n"
        "assert jax.device_count() == 8, jax.devices()\n"
        f"for name in {names!r}:\n"
        "    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)\n"
        "    assert result.attempted > 0, name\n"
        "    if result.failed: sys.exit(f'{result.failed} example(s) failed in {name}')\n"
    )
    environment = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", KERAS_BACKEND="jax")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_parameter_count_matches_built_model(architecture, shared_tiny_lm):
    lm = shared_tiny_lm(architecture)
    config = tiny_backbone_config(architecture, lm.backbone.vocabulary_size)
    assert sizing.count_parameters(config, architecture) == lm.backbone.count_params()


def test_real_gemma_sizes():
    gemma_7b = dict(vocabulary_size=256000, num_layers=28, num_query_heads=16, num_key_value_heads=16,
                    hidden_dim=3072, intermediate_dim=49152, head_dim=256)
    assert sizing.count_parameters(gemma_7b, "gemma") / 1e9 == pytest.approx(8.54, abs=0.01)


def test_tpu_v3_8_choices():
    two_b, seven_b = 2.51e9 * 2, 8.54e9 * 2  # bfloat16 bytes
    assert choose_strategy(two_b, TPU_V3_8, 16).kind == "data"
    seven = choose_strategy(seven_b, TPU_V3_8, 16)
    assert seven.kind == "model" and seven.mesh == (4, 2) and "model parallel needed" in seven.reason
    # A batch that 8 replicas cannot split moves devices to the model axis.
    assert choose_strategy(two_b, TPU_V3_8, 4).mesh == (4, 2)
    # The user's choice wins.
    assert choose_strategy(two_b, TPU_V3_8, 8, "model", "1x8").mesh == (1, 8)
    assert choose_strategy(two_b, TPU_V3_8, 8, "model").mesh == (4, 2)
    assert choose_strategy(two_b, TPU_V3_8, 8, "none").kind == "none"


def test_tpu_v5e_8_chooses_as_v3_8():
    """Kaggle's TPU v5e-8 (8 chips, JAX kind "TPU v5 lite") and a v3-8 (8 cores) both give 8 × 16 GiB."""
    v5e_8 = DeviceInfo("tpu", 8, 16 * GiB, "TPU v5 lite")
    for param_bytes, batch in ((2.51e9 * 2, 16), (8.54e9 * 2, 16), (2.51e9 * 2, 4)):
        v5e, v3 = choose_strategy(param_bytes, v5e_8, batch), choose_strategy(param_bytes, TPU_V3_8, batch)
        assert (v5e.kind, v5e.mesh) == (v3.kind, v3.mesh)
    assert v5e_8.describe() == "8 × TPU v5 lite (tpu), 16.0 GiB each, 1 process"


def test_gpu_and_single_device_choices():
    assert choose_strategy(17e9, TWO_H100, 8).mesh == (2, 1)
    single = DeviceInfo("cpu", 1, 8 * GiB)
    assert choose_strategy(1e6, single, 3).kind == "none"


@pytest.mark.parametrize(
    "args, message",
    [
        ((5e9, TPU_V3_8, 8, "auto", "2x2"), "needs 4 devices, but there are 8"),
        ((5e9, TPU_V3_8, 12, "data"), "global batch (12) is not divisible by the data-parallel degree 8"),
        ((5e9, TPU_V3_8, 5, "model", "2x4"), "not divisible by the data-parallel degree 2"),
        ((200 * GiB, TPU_V3_8, 8), "cannot fit even sharded over all 8 devices"),
        ((17e9, TPU_V3_8, 8, "data"), "do not fit one device"),
        ((5e9, TPU_V3_8, 8, "data", "2x4"), "model axis of 1"),
        ((5e9, TPU_V3_8, 8, "pipeline"), "distribution must be one of"),
        ((5e9, TPU_V3_8, 8, "auto", "8"), "BATCHxMODEL"),
    ],
)
def test_clear_errors_before_anything_is_built(args, message):
    with pytest.raises(DistributionError, match=re.escape(message)):
        choose_strategy(*args)


def test_detect_devices_and_plan_here():
    info = distribution.detect_devices()
    assert info.count == len(keras.distribution.list_devices()) and info.memory_bytes > 0
    chosen, architecture = distribution.plan("tiny:gemma2", "float32", 8, devices=TPU_V3_8, verbose=False)
    assert (chosen.kind, chosen.mesh, architecture) == ("data", (8, 1), "gemma")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_large_kernel_matches_a_rule(architecture):
    """Each kernel bigger than a norm scale has a layout; LoRA and norms have none."""
    lm = build_tiny_causal_lm(architecture)
    enable_lora(lm, rank=2, targets="all")
    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), keras.distribution.list_devices()[:1])
    layouts = distribution.layout_map(architecture, mesh)
    for variable in lm.backbone.variables:
        layout = layouts[variable.path]
        if "lora_kernel" in variable.path or len(variable.shape) == 1:
            assert layout is None, variable.path
        else:
            assert layout is not None and len(layout.axes) == len(variable.shape), variable.path


def test_gemma3_layout_matches_keras_hub_rules_for_shared_names():
    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), keras.distribution.list_devices()[:1])
    ours, keras_hub_map = distribution.gemma3_layout_map(mesh), distribution.layout_map("gemma", mesh)
    assert {k: v.axes for k, v in ours.items()} == {k: v.axes for k, v in keras_hub_map.items()}
