"""The fused, sliced cross-entropy: equal to the reference on loss-carrying tokens, and no projection past them."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kerasgemma import forward
from kerasgemma.data import Batches, TokenizedExample
from kerasgemma.forward import cross_entropy, fused_cross_entropy
from kerasgemma.model import enable_lora
from kerasgemma.tiny import ARCHITECTURES, build_tiny_causal_lm
from kerasgemma.training.step import summed_loss


def reference_loss(hidden, matrix, target_ids, loss_mask, weights, soft_cap):
    logits = jnp.einsum("bsd,vd->bsv", hidden, matrix)
    if soft_cap is not None:
        logits = jnp.tanh(logits / soft_cap) * soft_cap
    return jnp.sum(cross_entropy(logits, target_ids) * loss_mask * weights)


@pytest.mark.parametrize("rows, length, chunk_tokens, soft_cap", [
    (2, 7, 4, None), (3, 10, 5, 30.0), (1, 9, 100, None), (4, 6, 1, None), (2, 8, 3, 2.0),
])
def test_equals_the_reference_on_loss_carrying_tokens(rows, length, chunk_tokens, soft_cap):
    rng = np.random.default_rng(rows * 100 + length)
    hidden = rng.normal(size=(rows, length, 8)).astype("float32")
    matrix = rng.normal(size=(11, 8)).astype("float32")
    target_ids = rng.integers(0, 11, size=(rows, length))
    loss_mask = rng.random((rows, length)) < 0.6
    loss_mask[0] = False  # a row without a loss-carrying token
    loss_mask[-1, -1] = True
    weights = rng.random((rows, length)).astype("float32")

    def fused(h):
        return jnp.sum(fused_cross_entropy(h, matrix, target_ids, loss_mask, soft_cap, chunk_tokens) * weights)

    def reference(h):
        return reference_loss(h, matrix, target_ids, loss_mask, weights, soft_cap)

    np.testing.assert_allclose(fused(hidden), reference(hidden), rtol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.grad(fused))(hidden), jax.grad(reference)(hidden), atol=2e-6)
    losses = fused_cross_entropy(hidden, matrix, target_ids, loss_mask, soft_cap, chunk_tokens)
    assert np.all(np.asarray(losses)[~loss_mask] == 0) and np.all(np.asarray(losses)[loss_mask] > 0)


def test_slices_past_the_last_loss_carrying_token_are_not_projected(monkeypatch):
    """2 rows of 8 tokens in slices of 4: the 4 loss-carrying tokens, wherever they lie, fill one slice (sorting each
    row alone would need two), so 1 of the 4 slices is projected."""
    projected = []
    project = forward._chunk_losses_and_grads

    def counting(hidden, matrix, targets, soft_cap):
        jax.debug.callback(lambda: projected.append(1))
        return project(hidden, matrix, targets, soft_cap)

    monkeypatch.setattr(forward, "_chunk_losses_and_grads", counting)
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 8, 4)).astype("float32")
    matrix = rng.normal(size=(5, 4)).astype("float32")
    target_ids = rng.integers(0, 5, size=(2, 8))
    loss_mask = np.zeros((2, 8), bool)
    loss_mask[0, [1, 6, 7]] = True
    loss_mask[1, 4] = True
    losses = jax.jit(lambda h: fused_cross_entropy(h, matrix, target_ids, loss_mask, None, 4))(hidden)
    jax.effects_barrier()
    assert len(projected) == 1
    want = cross_entropy(np.einsum("bsd,vd->bsv", hidden, matrix), target_ids) * loss_mask
    np.testing.assert_allclose(losses, want, rtol=1e-5)


@pytest.mark.parametrize(
    "architecture", [a if a in ("gemma", "gemma2") else pytest.param(a, marks=pytest.mark.slow) for a in ARCHITECTURES]
)
def test_train_loss_and_lora_gradients_equal_the_full_logits(architecture, monkeypatch):
    """A packed batch whose prompts fill a quarter of the slices: the summed loss and the LoRA gradients of the train
    step equal those from full float32 logits (Gemma 2's final soft-cap included)."""
    monkeypatch.setattr(forward, "LOSS_CHUNK_TOKENS", 8)
    lm = build_tiny_causal_lm(architecture)
    enable_lora(lm, rank=2)
    rng = np.random.default_rng(0)
    for variable in lm.trainable_variables:  # LoRA B is 0 at first: give every gradient a path
        variable.assign(rng.normal(scale=0.1, size=variable.shape).astype(variable.dtype))
    examples = [TokenizedExample(rng.integers(10, lm.backbone.vocabulary_size, n).astype(np.int32),
                                 (np.arange(n) >= 4).astype(np.int8)) for n in (9, 14, 6)]
    batch = next(Batches(examples, batch_size=2, sequence_length=16).epoch(0))
    assert 0 < batch["loss_weights"].sum() <= 24  # at most 3 of the 4 slices of 8 tokens carry loss
    batch = {key: jnp.asarray(value) for key, value in batch.items()}  # as the trainer puts them on the device
    non_trainable = [v.value for v in lm.non_trainable_variables]
    trainable = [v.value for v in lm.trainable_variables]

    def mean_loss(values, fused):
        total, count = summed_loss(lm, values, non_trainable, batch, fused_loss=fused)
        return total / count

    fused = jax.jit(jax.value_and_grad(lambda values: mean_loss(values, True)))(trainable)
    reference = jax.jit(jax.value_and_grad(lambda values: mean_loss(values, False)))(trainable)
    np.testing.assert_allclose(fused[0], reference[0], rtol=1e-5)
    for got, want in zip(fused[1], reference[1]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_rows_split_over_devices_give_the_unsplit_loss():
    """Under a keras data-parallel distribution on 4 CPU devices each device sorts and projects its own rows, with
    no gather (the slices of 1024 flattened tokens before 2026-11-30 gathered every row on every device); losses and
    gradients equal the unsplit ones."""
    script = textwrap.dedent("""
        import re
        import jax, jax.numpy as jnp, keras, numpy as np
        from kerasgemma import forward
        rng = np.random.default_rng(0)
        hidden = jnp.asarray(rng.normal(size=(8, 12, 4)), jnp.float32)
        matrix = jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)
        target_ids = jnp.asarray(rng.integers(0, 9, size=(8, 12)))
        loss_mask = jnp.asarray(rng.random((8, 12)) < 0.5)
        loss = lambda h: jnp.sum(forward.fused_cross_entropy(h, matrix, target_ids, loss_mask, None, 6))
        want = jax.jit(jax.value_and_grad(loss))(hidden)
        assert forward._row_groups(8) == 1
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
        assert forward._row_groups(8) == 4 and forward._row_groups(6) == 1
        sharding = jax.sharding.NamedSharding(keras.distribution.distribution().device_mesh.backend_mesh,
                                              jax.sharding.PartitionSpec("batch"))
        split = jax.device_put(hidden, sharding)
        got = jax.jit(jax.value_and_grad(loss))(split)
        # No device gathers the others' rows (XLA may gather through an all-reduce): every collective is a scalar,
        # the summed loss and the count of slices to project.
        compiled = jax.jit(jax.value_and_grad(loss)).lower(split).compile().as_text()
        pattern = r"= (\S+) (?:all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
        shapes = re.findall(pattern, compiled)
        assert shapes and all(re.fullmatch(r"[a-z0-9]+\[\](\{\})?", shape) for shape in shapes), shapes
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        np.testing.assert_allclose(got[1], want[1], atol=1e-6)
        print("ok")
    """)
    environment = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, **environment))
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
