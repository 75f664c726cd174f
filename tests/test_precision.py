"""dtype="auto" per device, and float16 training with dynamic loss scaling (T4/V100/P100).

JAX on CPU computes float16, so the float16 runs here do what a T4 would;
the device itself is faked (its `device_kind` / `compute_capability`).
"""

import json

import jax
import numpy as np
import pytest

from kerasgemma import precision
from kerasgemma import run as run_module
from kerasgemma.config import TrainConfig
from kerasgemma.data import Batches
from kerasgemma.data import TokenizedExample
from kerasgemma.demo import SAMPLE_DATA
from kerasgemma.model import enable_lora
from kerasgemma.model import load_causal_lm
from kerasgemma.training import checkpoint
from kerasgemma.training import optimizer as optimizer_module
from kerasgemma.training.optimizer import LOSS_SCALE_GROWTH_STEPS
from kerasgemma.training.optimizer import loss_scale_index
from kerasgemma.training.optimizer import make_optimizer
from kerasgemma.training.step import make_train_step
from kerasgemma.training.step import stack_micro_batches


class FakeDevice:
    def __init__(self, platform, device_kind, compute_capability=None):
        self.platform, self.device_kind = platform, device_kind
        if compute_capability is not None:
            self.compute_capability = compute_capability


@pytest.mark.parametrize(
    "device, dtype",
    [
        (FakeDevice("gpu", "Tesla T4", "7.5"), "float16"),
        (FakeDevice("gpu", "Tesla V100-SXM2-16GB", "7.0"), "float16"),
        (FakeDevice("gpu", "Tesla P100-PCIE-16GB"), "float16"),  # no compute_capability: by name
        (FakeDevice("gpu", "Tesla T4"), "float16"),
        (FakeDevice("gpu", "NVIDIA A100-SXM4-40GB", "8.0"), "bfloat16"),
        (FakeDevice("gpu", "NVIDIA L4", "8.9"), "bfloat16"),
        (FakeDevice("gpu", "NVIDIA H100 80GB HBM3"), "bfloat16"),
        (FakeDevice("tpu", "TPU v5 lite"), "bfloat16"),
        (FakeDevice("cpu", "cpu"), "float32"),
    ],
)
def test_auto_dtype_by_device(device, dtype):
    chosen, reason = precision.auto_dtype(device)
    assert chosen == dtype
    assert device.device_kind in reason or device.platform == "cpu"


def _batch(lm, seed=1):
    rng = np.random.default_rng(seed)
    examples = [TokenizedExample(rng.integers(10, lm.backbone.vocabulary_size, 17).astype(np.int32),
                                 np.ones(17, np.int8)) for _ in range(4)]
    return stack_micro_batches([next(Batches(examples, batch_size=4, sequence_length=16, mode="pad").epoch(0))])


def _train(lm, batch, steps, loss_scaling):
    config = TrainConfig(learning_rate=3e-2, schedule="constant", warmup_steps=0)
    optimizer = make_optimizer(config, steps, lm.trainable_variables, loss_scaling=loss_scaling)
    step = make_train_step(lm, optimizer)
    state = ([jax.numpy.array(v.value) for v in lm.trainable_variables],
             [jax.numpy.array(v.value) for v in optimizer.variables])
    non_trainable = [v.value for v in lm.non_trainable_variables]
    losses = []
    for _ in range(steps):
        state, loss, _ = step(state, non_trainable, batch)
        losses.append(float(loss))
    return losses, state, optimizer, step, non_trainable


@pytest.fixture(scope="module")
def float32_and_float16_lms():
    """Two tiny Gemma LMs with LoRA holding the same weights: float32, and float16 (rounded)."""
    models = {}
    for dtype in ("float32", "float16"):
        lm = load_causal_lm("tiny:gemma", dtype=dtype)
        enable_lora(lm, rank=2)
        models[dtype] = lm
    for source, target in zip(models["float32"].weights, models["float16"].weights):
        target.assign(np.asarray(source.numpy()).astype(target.dtype))
    return models


def test_float16_with_loss_scaling_trains_like_float32(float32_and_float16_lms):
    lm32, lm16 = float32_and_float16_lms["float32"], float32_and_float16_lms["float16"]
    assert lm16.backbone.transformer_layers[0].attention.query_dense._kernel.dtype == "float16"
    assert all(v.dtype == "float32" for v in lm16.trainable_variables)
    batch = _batch(lm32)
    reference, _, _, _, _ = _train(lm32, batch, 6, loss_scaling=False)
    losses, state, optimizer, _, _ = _train(lm16, batch, 6, loss_scaling=True)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05
    # float16 rounding of weights and activations, nothing more (measured up to 4e-5 here).
    np.testing.assert_allclose(losses, reference, rtol=0, atol=5e-3)
    assert float(state[1][loss_scale_index(optimizer)]) > 1.0


def test_overflowing_step_is_skipped_and_the_scale_halves_then_grows(float32_and_float16_lms):
    lm = float32_and_float16_lms["float16"]
    batch = _batch(lm, seed=2)
    _, state, optimizer, step, non_trainable = _train(lm, batch, 1, loss_scaling=True)
    index = loss_scale_index(optimizer)
    counter = next(i for i, v in enumerate(optimizer.variables) if v is optimizer.step_counter)
    trainable, variables = state
    before = [np.asarray(v) for v in trainable]
    variables[index] = jax.numpy.asarray(np.float32(2.0**40))  # float16 gradients overflow at this scale
    (trainable, variables), loss, _ = step((trainable, variables), non_trainable, batch)
    assert np.isfinite(float(loss))  # the loss is never scaled; only the gradients overflowed
    assert float(variables[index]) == 2.0**39
    for old, new in zip(before, trainable):  # the update was skipped
        np.testing.assert_array_equal(old, np.asarray(new))
    variables[index] = jax.numpy.asarray(np.float32(1024.0))
    variables[counter] = jax.numpy.asarray(np.asarray(LOSS_SCALE_GROWTH_STEPS - 1, np.asarray(variables[counter]).dtype))
    (trainable, variables), _, _ = step((trainable, variables), non_trainable, batch)
    assert float(variables[index]) == 2048.0 and int(variables[counter]) == 0
    assert any(not np.array_equal(old, np.asarray(new)) for old, new in zip(before, trainable))


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two runs of a tiny model: ~25 s
def test_auto_on_a_t4_trains_float16_with_loss_scaling_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "default_device", lambda: FakeDevice("gpu", "Tesla T4", "7.5"))
    # Keras' default initial scale, which overflows on this model's first step: the
    # checkpoint then holds a scale (and growth counter) that differ from a fresh start.
    monkeypatch.setattr(optimizer_module, "INITIAL_LOSS_SCALE", 2.0**15)
    config = TrainConfig(preset="tiny:gemma", data=str(SAMPLE_DATA), max_steps=4, save_every=2, eval_every=0,
                         keep_checkpoints=2, sequence_length=32, batch_size=2, learning_rate=1e-2,
                         output_dir=str(tmp_path), dtype="auto")
    run = run_module.train(config, progress=False)
    out = capsys.readouterr().out
    assert ("Precision: float16 base weights, float32 LoRA with dynamic loss scaling (dtype auto: Tesla T4 "
            "(compute capability 7.5) has no bfloat16 arithmetic") in out
    saved = json.loads((run.run_dir / "config.json").read_text())
    assert saved["dtype"] == "float16"
    assert run.trainer.loss_scale_index is not None
    records = [r for r in _metrics(run.run_dir) if "train_loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["train_loss"]) for r in records)
    assert all("loss_scale" in r for r in records)  # synced every step on CPU

    # "Disconnect" after step 2: drop the step-4 checkpoint and the metrics after step 2, then resume.
    last, first = checkpoint.list_checkpoints(run.run_dir)[::-1]
    uninterrupted = checkpoint.load_checkpoint(last)
    scale_at_2 = checkpoint.load_checkpoint(first)["optimizer"][run.trainer.loss_scale_index]
    assert float(scale_at_2) < 2.0**15  # halved by an overflow: restoring it matters
    checkpoint._remove(last)
    resumed = run_module.resume(run.run_dir, progress=False)
    again = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(run.run_dir))
    for a, b in zip(uninterrupted["trainable"] + uninterrupted["optimizer"], again["trainable"] + again["optimizer"]):
        np.testing.assert_array_equal(a, b)
    resumed_records = [r for r in _metrics(resumed.run_dir) if "train_loss" in r]
    assert [(r["train_loss"], r["loss_scale"]) for r in resumed_records] == [
        (r["train_loss"], r["loss_scale"]) for r in records
    ]
