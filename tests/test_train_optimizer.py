"""Learning-rate schedule values and AdamW's weight-decay exclusions on keras-hub names."""

import jax
import keras
import numpy as np
import pytest

from kerasgemma.config import TrainConfig
from kerasgemma.model import enable_lora, load_causal_lm
from kerasgemma.training.optimizer import WarmupDecay, make_optimizer


def _rates(schedule, steps):
    return [float(schedule(step)) for step in range(steps)]


def test_warmup_then_cosine():
    rates = _rates(WarmupDecay(1e-3, warmup_steps=4, total_steps=12, decay="cosine"), 13)
    # Warmup: update s (0-based) gets (s + 1) / 4 of the peak; never 0.
    np.testing.assert_allclose(rates[:4], [2.5e-4, 5e-4, 7.5e-4, 1e-3], rtol=1e-6)
    # Cosine from the peak at update 4 to 0 at update 12 (8 decay steps).
    expected = [1e-3 * 0.5 * (1 + np.cos(np.pi * i / 8)) for i in range(9)]
    np.testing.assert_allclose(rates[4:], expected, rtol=1e-5, atol=1e-9)
    assert rates[11] > 0  # the run's last update (11 of 0..11) still moves


def test_linear_and_constant():
    linear = _rates(WarmupDecay(2.0, warmup_steps=0, total_steps=4, decay="linear"), 5)
    np.testing.assert_allclose(linear, [2.0, 1.5, 1.0, 0.5, 0.0], atol=1e-7)
    constant = _rates(WarmupDecay(3.0, warmup_steps=2, total_steps=5, decay="constant"), 6)
    np.testing.assert_allclose(constant, [1.5, 3.0, 3.0, 3.0, 3.0, 3.0], atol=1e-7)
    with pytest.raises(ValueError, match="cosine, linear or constant"):
        WarmupDecay(1.0, 0, 10, decay="exponential")


def test_optimizer_uses_the_config_schedule():
    config = TrainConfig(learning_rate=1e-2, warmup_steps=2, schedule="linear")
    variable = keras.Variable(np.ones(3, np.float32), name="lora_kernel_a")
    optimizer = make_optimizer(config, total_steps=10, trainable_variables=[variable])
    assert float(optimizer.learning_rate) == pytest.approx(5e-3)  # update 0 of warmup 2
    assert optimizer.global_clipnorm == config.max_grad_norm


def test_weight_decay_skips_norms_embeddings_and_biases():
    """One AdamW step with zero gradients moves a weight only by its decay."""
    lm = load_causal_lm("tiny:gemma")
    enable_lora(lm, rank=2)
    backbone = lm.backbone
    block = backbone.transformer_layers[0]
    # Unfreeze what a user might: the embeddings, a norm, a plain kernel.
    for layer in (backbone.token_embedding, block.pre_attention_norm, block.attention.output_dense):
        layer.trainable = True
    dense = keras.layers.Dense(3, name="head")
    dense.build((None, 2))
    variables = lm.trainable_variables + dense.trainable_variables
    names = {variable.path: variable.name for variable in variables}
    # keras-hub's bare names are what Keras matches the exclusions against.
    assert {"embeddings", "scale", "kernel", "bias", "lora_kernel_a", "lora_kernel_b"} <= set(names.values())

    rate, decay = 0.5, 0.1
    config = TrainConfig(learning_rate=rate, weight_decay=decay, schedule="constant", max_grad_norm=None)
    optimizer = make_optimizer(config, total_steps=10, trainable_variables=variables)
    values = [jax.numpy.asarray(v.value) + 1.0 for v in variables]  # no zeros: decay must show
    grads = [jax.numpy.zeros_like(value) for value in values]
    new_values, _ = optimizer.stateless_apply([v.value for v in optimizer.variables], grads, values)

    for variable, before, after in zip(variables, values, new_values):
        before, after = np.asarray(before, np.float32), np.asarray(after, np.float32)
        if variable.name in ("embeddings", "scale", "bias"):
            np.testing.assert_array_equal(after, before, err_msg=variable.path)
        else:  # kernels and the LoRA matrices: w <- w - lr * wd * w
            np.testing.assert_allclose(after, before * (1 - rate * decay), rtol=1e-6, err_msg=variable.path)
