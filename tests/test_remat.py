"""Rematerialisation (`TrainConfig.remat`): the same losses and gradients.

Memory is not asserted here: XLA:CPU's compiled temp size does not drop
with remat (measured on an 8-layer tiny Gemma 3, batch 2 x 256: 45.8 MB
without, 45.9 MB per block, 46.6 MB dots), so the saving is measured on the
GPU by bench/memory.py.
"""

import jax
import pytest
import numpy as np

from kerasgemma.model import enable_lora
from kerasgemma.model import load_causal_lm
from kerasgemma.training.step import summed_loss


@pytest.mark.slow
def test_remat_gives_equal_losses_and_gradients():
    lm = load_causal_lm("tiny:gemma3")
    enable_lora(lm, rank=2)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 500, size=(2, 48)).astype("int32")
    batch = {"token_ids": tokens, "target_ids": np.roll(tokens, -1, axis=1),
             "segment_ids": np.ones_like(tokens), "loss_weights": np.ones_like(tokens)}
    trainable = [v.value for v in lm.trainable_variables]
    non_trainable = [v.value for v in lm.non_trainable_variables]
    results = {}
    for remat in ("none", "block", "dots"):
        def loss(values, remat=remat):
            total, count = summed_loss(lm, values, non_trainable, batch, remat=remat)
            return total / count

        results[remat] = jax.jit(jax.value_and_grad(loss))(trainable)
    for remat in ("block", "dots"):
        np.testing.assert_allclose(results[remat][0], results["none"][0], rtol=1e-6)
        for grad, reference in zip(results[remat][1], results["none"][1]):
            np.testing.assert_allclose(grad, reference, rtol=1e-5, atol=1e-7)


def test_dots_keeps_projections_and_cudnn_attention_not_score_einsums():
    from jax._src.cudnn import fused_attention_stablehlo

    from kerasgemma.remat import FUSED_ATTENTION_FORWARD, REMAT_POLICIES

    policy = REMAT_POLICIES["dots"]
    x, kernel = jax.numpy.ones((2, 4, 8)), jax.numpy.ones((8, 3))

    def last_equation(fn, *args):
        return jax.make_jaxpr(fn)(*args).eqns[-1]

    projection = last_equation(lambda x: jax.numpy.einsum("btd,df->btf", x, kernel), x)
    scores = last_equation(lambda x: jax.numpy.einsum("bqd,bkd->bqk", x, x), x)
    assert policy(projection.primitive, **projection.params)
    assert not policy(scores.primitive, **scores.params)
    # The name the policy matches is the primitive JAX's cuDNN attention binds in its forward pass
    # (a rename would silently make "dots" run the attention forward again in the backward pass).
    assert fused_attention_stablehlo._dot_product_attention_fwd_p_wrapper.name == FUSED_ATTENTION_FORWARD
    assert policy(fused_attention_stablehlo._dot_product_attention_fwd_p_wrapper)


def test_dots_keeps_the_flash_kernels_outputs_and_block_keeps_none(capsys):
    """Under "dots" the backward pass reads the flash kernel's output and log-sum-exp (its two
    named residuals) instead of running its forward kernel again; "block" keeps neither."""
    from jax.ad_checkpoint import print_saved_residuals

    from kerasgemma.flash_attention import FORWARD_OUTPUTS, BlockSizes, segment_flash_attention
    from kerasgemma.remat import REMAT_POLICIES

    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.normal(size=(1, 32, 2, 16)), jax.numpy.float32)
    kernel = jax.numpy.asarray(rng.normal(size=(16, 16)), jax.numpy.float32)
    segment_ids = jax.numpy.asarray([[1] * 20 + [2] * 12])

    def attention(x):
        projected = x @ kernel
        out = segment_flash_attention(projected, projected, projected, segment_ids, 0.3,
                                      block_sizes=BlockSizes(16, 16, 16, 16, 16, 16))
        return jax.numpy.sum(out**2)

    def named_residuals(remat):
        capsys.readouterr()
        print_saved_residuals(jax.checkpoint(attention, policy=REMAT_POLICIES[remat]), x)
        return [line for line in capsys.readouterr().out.splitlines() if FORWARD_OUTPUTS in line]

    assert len(named_residuals("dots")) == 2
    assert named_residuals("block") == []
