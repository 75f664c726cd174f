"""LoRA beside the frozen kernel (`kerasgemma.lora_path`) computes what Keras' merged LoRA computes."""

import warnings

import jax
import keras
import numpy as np
import pytest

from kerasgemma.config import TrainConfig
from kerasgemma.data import Batches, TokenizedExample
from kerasgemma.forward import logits_fn
from kerasgemma.lora_path import beside_reason, equation_reason, set_lora_path
from kerasgemma.model import enable_lora, load_causal_lm
from kerasgemma.tiny import ARCHITECTURES
from kerasgemma.training import stack_micro_batches
from kerasgemma.training.optimizer import make_optimizer
from kerasgemma.training.step import make_train_step, summed_loss


def _batch(vocabulary_size, seed=0):
    rng = np.random.default_rng(seed)
    examples = []
    for n in (9, 14, 6, 11):
        ids = rng.integers(10, vocabulary_size, n).astype(np.int32)
        examples.append(TokenizedExample(ids, (np.arange(n) >= 2).astype(np.int8)))
    return next(Batches(examples, batch_size=2, sequence_length=16).epoch(0))


def _logits_and_lora_grads(lm, batch):
    """Logits and the mean loss' gradient w.r.t. every LoRA A and B, from one compiled call."""
    non_trainable = [v.value for v in lm.non_trainable_variables]

    def loss(values):
        total, count = summed_loss(lm, values, non_trainable, batch, fused_loss=False)
        return total / count, logits_fn(lm, values, non_trainable, batch)

    grads, logits = jax.jit(jax.grad(loss, has_aux=True))([v.value for v in lm.trainable_variables])
    return np.asarray(logits), [np.asarray(grad) for grad in grads]


# Gemma 1 runs in `make test-fast`; the rest (Gemma 4: the most kinds of layer) cost ~10 s each, in `make test`.
FAST_ARCHITECTURES = ("gemma",)


@pytest.mark.parametrize(
    "architecture",
    [a if a in FAST_ARCHITECTURES else pytest.param(a, marks=pytest.mark.slow) for a in ARCHITECTURES],
)
def test_beside_equals_merged_logits_and_lora_gradients(architecture):
    # Every projection LoRA can target, with random A and B so the update shows.
    lm = load_causal_lm(f"tiny:{architecture}", dtype="float32")
    enable_lora(lm, rank=2, targets="all", lora_path="merged")
    rng = np.random.default_rng(0)
    for variable in lm.trainable_variables:
        variable.assign(rng.normal(0, 0.3, variable.shape))
    batch = _batch(lm.backbone.vocabulary_size)
    merged = _logits_and_lora_grads(lm, batch)
    paths = set_lora_path(lm, "beside")
    assert set(paths.values()) == {"beside"} and len(paths) >= 2 * 5
    beside = _logits_and_lora_grads(lm, batch)

    np.testing.assert_allclose(beside[0], merged[0], rtol=1e-5, atol=1e-5)
    assert len(beside[1]) == len(merged[1]) == 2 * len(paths)
    for variable, got, want in zip(lm.trainable_variables, beside[1], merged[1]):
        assert "lora_kernel" in variable.path
        scale = np.abs(want).max()
        assert scale > 0, variable.path
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=variable.path)


@pytest.mark.slow
def test_train_steps_give_the_same_losses():
    architecture = "gemma4"
    losses = {}
    for lora_path in ("merged", "beside"):
        keras.utils.set_random_seed(0)
        lm = load_causal_lm(f"tiny:{architecture}", dtype="float32")
        enable_lora(lm, rank=2, targets="all", lora_path=lora_path)
        batch = stack_micro_batches([_batch(lm.backbone.vocabulary_size, seed=1)])
        optimizer = make_optimizer(TrainConfig(learning_rate=3e-2, schedule="constant"), 4, lm.trainable_variables)
        step = make_train_step(lm, optimizer)
        state = ([jax.numpy.array(v.value) for v in lm.trainable_variables],
                 [jax.numpy.array(v.value) for v in optimizer.variables])
        non_trainable = [v.value for v in lm.non_trainable_variables]
        losses[lora_path] = []
        for _ in range(4):
            state, loss, _ = step(state, non_trainable, batch)
            losses[lora_path].append(float(loss))
    assert losses["merged"][-1] < losses["merged"][0]
    np.testing.assert_allclose(losses["beside"], losses["merged"], rtol=1e-5)


def test_enable_lora_computes_beside_and_keeps_the_variables():
    lm = load_causal_lm("tiny:gemma3")
    enable_lora(lm, rank=2, targets="attention")
    layers = [layer for layer in lm.backbone._flatten_layers() if getattr(layer, "lora_enabled", False)]
    assert layers and all("call" in vars(layer) for layer in layers)
    names = [v.path for v in lm.variables]
    trainable = [v.path for v in lm.trainable_variables]
    set_lora_path(lm, "merged")
    assert not any("call" in vars(layer) for layer in layers)
    set_lora_path(lm, "beside")
    assert [v.path for v in lm.variables] == names and [v.path for v in lm.trainable_variables] == trainable
    with pytest.raises(ValueError, match="lora_path must be one of"):
        set_lora_path(lm, "fused")


def _with_lora(layer, x):
    """`layer` in a Sequential, built on `x`, with LoRA whose B is random (so the update shows)."""
    model = keras.Sequential([layer])
    model(x)
    layer.enable_lora(2)
    layer.lora_kernel_b.assign(np.random.default_rng(0).normal(size=layer.lora_kernel_b.shape))
    return model


def test_an_equation_that_breaks_x_a_b_keeps_the_merged_path_with_a_warning():
    assert equation_reason("btd,ndh->btnh") is None and equation_reason("btnh,nhd->btd") is None
    assert "summed over" in equation_reason("bh,dh->bh")
    layer = keras.layers.EinsumDense("abc,cd->adb", output_shape=(3, 5))
    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype("float32")
    model = _with_lora(layer, x)
    expected = np.asarray(model(x))
    with pytest.warns(UserWarning, match="is not the output's last axis"):
        paths = set_lora_path(model, "beside")
    assert list(paths.values()) == [beside_reason(layer)] and "call" not in vars(layer)
    np.testing.assert_allclose(np.asarray(model(x)), expected)


def test_dense_computes_beside_and_a_quantized_layer_keeps_keras_path():
    layer = keras.layers.Dense(3, use_bias=True, bias_initializer="ones")
    x = np.random.default_rng(1).normal(size=(2, 4)).astype("float32")
    model = _with_lora(layer, x)
    expected = np.asarray(model(x))
    assert set_lora_path(model, "beside") == {layer.path: "beside"}
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-6, atol=1e-6)

    quantized = keras.layers.Dense(3)
    quantized.build((None, 4))
    quantized.quantize("int8")
    quantized.enable_lora(2)
    reason = beside_reason(quantized)
    assert reason.startswith("quantized (int8)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = set_lora_path(keras.Sequential([quantized]), "beside")
    assert paths == {quantized.path: reason} and "call" not in vars(quantized)
