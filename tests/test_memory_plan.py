"""The memory plan: its estimate against the compiled train step's own memory, and `kerasgemma plan`."""

import json
import sys

import jax
import numpy as np
import pytest

from helpers import REPO_ROOT

from kerasgemma.cli import main
from kerasgemma.config import TrainConfig
from kerasgemma.data import Batches, TokenizedExample
from kerasgemma.distribution.devices import DeviceInfo
from kerasgemma.distribution.memory import DEVICE_PROFILES, MEASURED_MARGIN, memory_plan
from kerasgemma.distribution.sizing import preset_backbone_config
from kerasgemma.errors import EXIT_USER_ERROR
from kerasgemma.model import enable_lora, load_causal_lm
from kerasgemma.quantization import quantize_base
from kerasgemma.training.optimizer import make_optimizer
from kerasgemma.training.step import make_train_step, stack_micro_batches

ROWS, SEQUENCE_LENGTH = 4, 256
ONE_CPU = DeviceInfo("cpu", 1, 64 * 2**30, "cpu")


def _measured_bytes(preset, quantize):
    """Argument + temp bytes XLA reserves for one compiled train step (`memory_analysis`)."""
    lm = load_causal_lm(preset, dtype="float32")
    quantize_base(lm, quantize)
    enable_lora(lm, rank=4)
    vocabulary = lm.backbone.vocabulary_size
    rng = np.random.default_rng(0)
    examples = [TokenizedExample(rng.integers(10, vocabulary, SEQUENCE_LENGTH + 1).astype(np.int32),
                                 np.ones(SEQUENCE_LENGTH + 1, np.int8)) for _ in range(ROWS)]
    batch = stack_micro_batches([next(Batches(examples, ROWS, SEQUENCE_LENGTH, mode="pad").epoch(0))])
    optimizer = make_optimizer(TrainConfig(), 10, lm.trainable_variables)
    step = make_train_step(lm, optimizer)
    state = ([v.value for v in lm.trainable_variables], [v.value for v in optimizer.variables])
    frozen = [v.value for v in lm.non_trainable_variables]
    analysis = jax.jit(step).lower(state, frozen, batch).compile().memory_analysis()
    return analysis.argument_size_in_bytes + analysis.temp_size_in_bytes, vocabulary


@pytest.mark.slow  # 30-50 s: loads, quantizes and compiles a train step
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_estimate_matches_the_compiled_step_within_the_margin(quantize):
    # Measured here (tiny:gemma3, 4 x 256 tokens, float32): estimate / measured
    # 0.74 (none) and 0.73 (int8); at 2 x 64 tokens 1.01. XLA on CPU keeps the
    # same temp bytes with remat, so remat's saving is checked on the GPU
    # (bench/memory.py), not here.
    measured, vocabulary = _measured_bytes("tiny:gemma3", quantize)
    architecture, config = preset_backbone_config("tiny:gemma3")
    config["vocabulary_size"] = vocabulary  # the tiny tokenizer's actual size
    # Measured on this CPU, planned for a CPU: the attention scores count.
    plan = memory_plan("tiny:gemma3", ONE_CPU, "float32", quantize, "none", ROWS, SEQUENCE_LENGTH,
                       lora_rank=4, backbone=(architecture, config))
    low, high = MEASURED_MARGIN
    assert low <= plan.total_bytes / measured <= high, (plan.describe(), measured)


def test_estimate_is_within_the_margin_of_every_measured_gpu_row():
    # bench/memory.py's rows (peak_bytes_in_use of one GPU), re-estimated
    # with today's plan for the same card: no model is built.
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import memory as bench_memory

    ratios = {}
    for path in sorted((REPO_ROOT / "bench" / "results").glob("*-memory*.json")):
        results = json.loads(path.read_text())
        card = DeviceInfo("gpu", 1, 140 * 2**30, results["card"])
        for row in results["rows"]:
            setting = bench_memory.parse_row(row["row"])
            # The plan is kerasgemma's: the transformers peer's rows are not its to estimate.
            if row.get("peak_bytes") and "error" not in row and setting[1] != bench_memory.HF_BNB4:
                estimate = bench_memory.estimate_bytes(*setting, results["batch_size"], devices=card)
                ratios[row["row"]] = round(estimate / row["peak_bytes"], 2)
    assert len(ratios) >= 6, ratios
    low, high = MEASURED_MARGIN
    assert all(low <= ratio <= high for ratio in ratios.values()), ratios


def test_plan_recommends_remat_and_refuses_with_the_numbers(capsys):
    assert main(["plan", "--preset", "gemma_2b_en", "--device", "t4", "--sequence-length", "4096",
                 "--batch-size", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Plan: 2.51 B parameters") and "does NOT fit" in out[0]
    # The least change that fits: no quantization, a rematerialised step, the batch as asked.
    assert out[1].startswith("Recommended: ") and "quantize none, remat dots, batch 1 x 4096" in out[1]

    assert main(["plan", "--preset", "gemma4_instruct_4b", "--device", "t4", "--json"]) == EXIT_USER_ERROR
    captured = capsys.readouterr()
    plans = json.loads(captured.out)
    assert plans["recommended"] is None and plans["asked"]["fits"] is False
    error = captured.err.strip()
    assert len(error.splitlines()) == 1 and "nothing fits gemma4_instruct_4b on t4" in error and "GiB" in error


def test_plan_splits_the_weights_over_a_tpu_mesh():
    v5e = DEVICE_PROFILES["tpu-v5e-8"]
    plan = memory_plan("gemma4_31b", v5e, batch_size=8, sequence_length=1024, remat="block")
    assert plan.strategy.mesh == (1, 8) and plan.dtype == "bfloat16"
    assert plan.base_bytes == plan.parameters * 2 // 8
    int4 = memory_plan("gemma4_31b", v5e, quantize="int4", batch_size=8, sequence_length=1024, remat="block")
    assert int4.base_bytes < plan.base_bytes / 3
