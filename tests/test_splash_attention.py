"""Splash and flash attention on packed rows (`kerasgemma.splash`, `kerasgemma.flash_attention`,
`packed_attention(kernel="splash" | "flash")`).

No TPU or GPU is at hand: the kernels run in Pallas' interpret mode on the CPU
(the same kernel code, run as JAX ops), so these tests check what they
compute, not their speed.

Tolerance: everything is float32. Splash forms the softmax online, one
128-token tile at a time (running maximum and sum, rescaled per tile); the
dense path takes one softmax over the whole row. Same arithmetic, another
order, so results move by float32 rounding: measured at most 1.2e-5 on hidden
states of magnitude ~3.5 after 2-4 tiny layers (Gemma 4's largest, its
query/key norms and scale 1.0 give the largest scores). A wrong mask, window,
scale or soft-cap moves them by 1e-2 or more (the soft-cap test shows one).
Against a float64 NumPy reference the kernel alone stays within 1e-5 (outputs
of magnitude ~1).
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from helpers import jitted_backbone, lora_model

import kerasgemma.attention
from kerasgemma.attention import packed_attention
from kerasgemma.forward import backbone_inputs
from kerasgemma.splash import splash_attention, splash_wanted
from kerasgemma.tiny import build_tiny_causal_lm
from kerasgemma.training.step import summed_loss

ATOL = 5e-5

# Three examples longer than the tiny models' window of 8 tokens, then padding
# (segment 0); 100 tokens, which Splash pads to its 128-token tile.
LENGTHS = (40, 25, 30)
PADDING = 5


def _packed_row(vocabulary_size, seed=0):
    segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(LENGTHS)] + [np.zeros(PADDING, int)])
    token_ids = np.random.default_rng(seed).integers(10, vocabulary_size, segment_ids.size)
    return {"token_ids": jnp.asarray(token_ids[None], jnp.int32), "segment_ids": jnp.asarray(segment_ids[None])}


def _hidden(lm, batch, kernel):
    with packed_attention(lm.backbone, batch["segment_ids"], kernel=kernel):
        return np.asarray(jitted_backbone(lm.backbone)(backbone_inputs(lm.backbone, batch)))


@pytest.mark.parametrize("kernel", ["splash", "flash"])
@pytest.mark.parametrize(
    "architecture", ["gemma3", *(pytest.param(a, marks=pytest.mark.slow) for a in ("gemma", "gemma2", "gemma4"))]
)
def test_kernel_equals_dense_and_each_example_alone(architecture, kernel, shared_tiny_lm):
    """Every position of a packed row with padding; the last example also against itself alone
    (its positions restart, its window and its attention stay inside it). Alone = first in a
    row of the same length, the rest padding, through keras-hub's own causal attention. Jitted
    forwards (helpers.jitted_backbone): eager JAX compiles each op once per shape."""
    lm = shared_tiny_lm(architecture)
    batch = _packed_row(lm.backbone.vocabulary_size)
    splash, dense = _hidden(lm, batch, kernel), _hidden(lm, batch, "dense")
    np.testing.assert_allclose(splash, dense, atol=ATOL, rtol=0)
    start, end = sum(LENGTHS[:-1]), sum(LENGTHS)
    alone = {"token_ids": jnp.roll(batch["token_ids"], -start, axis=1),
             "segment_ids": (jnp.arange(batch["token_ids"].shape[1]) < end - start)[None].astype(jnp.int32)}
    alone = np.asarray(jitted_backbone(lm.backbone)(backbone_inputs(lm.backbone, alone)))
    np.testing.assert_allclose(splash[:, start:end], alone[:, : end - start], atol=ATOL, rtol=0)


def _reference_attention(query, key, value, segment_ids, scale, soft_cap, window):
    """The dense computation in NumPy float64: `segment_causal_mask`, narrowed to the window."""
    query, key, value = (np.asarray(x, np.float64) for x in (query, key, value))
    key, value = (np.repeat(x, query.shape[2] // x.shape[2], axis=2) for x in (key, value))
    logits = np.einsum("btnh,bsnh->bnts", query * scale, key)
    if soft_cap is not None:
        logits = np.tanh(logits / soft_cap) * soft_cap
    mask = np.asarray(kerasgemma.attention.segment_causal_mask(segment_ids))
    if window is not None:
        index = np.arange(mask.shape[-1])
        mask = mask & (index[:, None] - index[None, :] < window)
    logits = np.where(mask[:, None], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bnts,bsnh->btnh", weights / weights.sum(-1, keepdims=True), value)


@pytest.mark.parametrize("soft_cap, window", [(None, None), (5.0, 100)])
def test_splash_over_several_tiles_equals_the_dense_computation(soft_cap, window):
    """300 tokens: padded to 384, three 128-token tiles a side, so the online softmax runs across
    tiles and whole tiles are skipped (above the diagonal; with a window of 100, two tiles back).
    Examples cross tile boundaries; 4 query heads share 2 key/value heads."""
    rng = np.random.default_rng(0)
    query = rng.normal(size=(2, 300, 4, 8)).astype("float32")
    key, value = (rng.normal(size=(2, 300, 2, 8)).astype("float32") for _ in range(2))
    segment_ids = np.array([[1] * 100 + [2] * 170 + [0] * 30, [1] * 20 + [2] * 250 + [3] * 30])
    got = splash_attention(query, key, value, segment_ids, 0.5, soft_cap, window)
    want = _reference_attention(query, key, value, segment_ids, 0.5, soft_cap, window)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", ["splash", "flash"])
def test_gemma2_attention_soft_cap_is_applied_where_logits_reach_it(kernel):
    """Query weights x10 push attention logits up to Gemma 2's cap (tiny: 50): the cap changes the
    outputs by ~0.6 (measured), and each kernel applies it as the dense path does. (x100 puts the
    logits in the thousands, where float32 rounding of a score alone is ~1e-4.)"""
    lm = build_tiny_causal_lm("gemma2")
    for block in lm.backbone.transformer_layers:
        block.attention.query_dense.kernel.assign(block.attention.query_dense.kernel * 10.0)
    batch = _packed_row(lm.backbone.vocabulary_size)
    capped = _hidden(lm, batch, kernel)
    np.testing.assert_allclose(capped, _hidden(lm, batch, "dense"), atol=ATOL, rtol=0)
    for block in lm.backbone.transformer_layers:
        block.attention.logit_soft_cap = None
    assert np.abs(_hidden(lm, batch, kernel) - capped).max() > 0.1


def test_auto_picks_splash_on_a_tpu_only(monkeypatch, shared_tiny_lm):
    for backend, wanted in (("tpu", True), ("gpu", False), ("cpu", False)):
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        assert splash_wanted() is wanted
    monkeypatch.undo()
    lm = shared_tiny_lm("gemma")
    attention = lm.backbone.transformer_layers[0].attention
    segment_ids = np.ones((1, 4), int)
    with packed_attention(lm.backbone, segment_ids):  # this CPU
        assert "_compute_attention" not in vars(attention)
    monkeypatch.setattr(kerasgemma.attention, "splash_wanted", lambda: True)  # a TPU
    with packed_attention(lm.backbone, segment_ids):
        assert "_compute_attention" in vars(attention)
    assert "_compute_attention" not in vars(attention)  # restored
    with pytest.raises(ValueError, match="kernel must be one of"):
        with packed_attention(lm.backbone, segment_ids, kernel="cudnn"):
            pass


@pytest.mark.slow
@pytest.mark.parametrize("kernel, function", [("splash", "splash_attention"), ("flash", "segment_flash_attention")])
def test_lora_gradients_and_train_loss_agree_with_each_kernel(monkeypatch, kernel, function):
    """The project's loss (fused, sliced) and its LoRA gradients through `packed_attention`'s
    default, with `auto_kernel` made to pick the kernel (as on a TPU for splash); Gemma 2 with
    2 KV heads for 4 query heads."""
    lm = lora_model("gemma2", num_key_value_heads=2)
    batch = _packed_row(lm.backbone.vocabulary_size)
    segment_ids = batch["segment_ids"]
    batch = dict(batch, target_ids=jnp.roll(batch["token_ids"], -1, axis=1),
                 loss_weights=(segment_ids > 0) & (jnp.roll(segment_ids, -1, axis=1) == segment_ids))
    trainable = [v.value for v in lm.trainable_variables]
    non_trainable = [v.value for v in lm.non_trainable_variables]

    def loss_and_grads():
        def loss(values):
            total, count = summed_loss(lm, values, non_trainable, batch)
            return total / count

        return jax.jit(jax.value_and_grad(loss))(trainable)

    dense_loss, dense_grads = loss_and_grads()
    calls = []
    attend = getattr(kerasgemma.attention, function)
    monkeypatch.setattr(kerasgemma.attention, "auto_kernel", lambda backbone: kernel)
    monkeypatch.setattr(kerasgemma.attention, function, lambda *a: calls.append(1) or attend(*a))
    kernel_loss, kernel_grads = loss_and_grads()
    assert len(calls) == lm.backbone.num_layers  # traced once per layer
    np.testing.assert_allclose(kernel_loss, dense_loss, rtol=1e-6)
    assert len(kernel_grads) == len(dense_grads) > 0
    for variable, got, want in zip(lm.trainable_variables, kernel_grads, dense_grads):
        assert "lora_kernel" in variable.path and np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0, err_msg=variable.path)


def test_keras_fused_op_on_a_tpu_drops_the_soft_cap_under_jit(monkeypatch):
    """Why the splash path matters for Gemma 2 on a TPU (docs/facts.md#splash): keras 3.15's
    `dot_product_attention` on a TPU gives a traced mask to `jax.nn.dot_product_attention`
    without `attn_logits_soft_cap`. The platform is faked; the cuDNN attempt then fails on
    this CPU and XLA's implementation runs, as it does on a TPU."""

    class FakeTpu:
        platform = "tpu"

    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(0, 30, size=(1, 8, 2, 4)), jnp.float32)
    mask = jnp.tril(jnp.ones((8, 8), bool))[None, None]

    def attention(q, mask, soft_cap):
        return keras.ops.dot_product_attention(q, q, q, mask=mask, attn_logits_soft_cap=soft_cap)

    uncapped = attention(q, mask, None)
    capped = splash_attention(q, q, q, jnp.ones((1, 8), jnp.int32), 1 / 2.0, soft_cap=5.0)
    assert np.abs(np.asarray(capped) - np.asarray(uncapped)).max() > 1e-2  # the cap matters here
    monkeypatch.setattr(jax, "devices", lambda *args: [FakeTpu()])
    on_tpu = jax.jit(attention, static_argnums=2)(q, mask, 5.0)
    np.testing.assert_allclose(on_tpu, uncapped, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("module, function", [("kerasgemma.splash", "splash_attention"),
                                              ("kerasgemma.flash_attention", "segment_flash_attention")])
def test_kernel_runs_per_shard_under_a_keras_distribution(module, function):
    """Pallas kernels must run inside `jax.shard_map` on several devices; on 4 CPU devices
    (rows over `batch`; heads over `model` with 2 KV heads split alike or 1 KV head copied)
    the result equals the unsharded one."""
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp, keras, numpy as np
        from {module} import {function} as splash_attention
        rng = np.random.default_rng(0)
        segment_ids = jnp.asarray(np.repeat([[1] * 25 + [2] * 10 + [0] * 5], 4, axis=0))
        attention = jax.jit(lambda q, kv: splash_attention(q, kv, kv, segment_ids, 0.3, soft_cap=5.0, window=8))
        q = jnp.asarray(rng.normal(size=(4, 40, 4, 8)), jnp.float32)
        kvs = [jnp.asarray(rng.normal(size=(4, 40, heads, 8)), jnp.float32) for heads in (1, 2)]
        alone = [np.asarray(attention(q, kv)) for kv in kvs]
        for shape in ((4, 1), (2, 2)):
            mesh = keras.distribution.DeviceMesh(shape, ("batch", "model"), keras.distribution.list_devices())
            layout = keras.distribution.LayoutMap(mesh)
            keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
            for kv, want in zip(kvs, alone):
                sharded = jax.jit(lambda q, kv: splash_attention(q, kv, kv, segment_ids, 0.3, soft_cap=5.0, window=8))
                assert "shard_map" in str(jax.make_jaxpr(sharded)(q, kv)), shape
                np.testing.assert_allclose(np.asarray(sharded(q, kv)), want, atol=1e-6)
        print("ok")
    """)
    environment = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, **environment))
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
