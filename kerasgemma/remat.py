"""Rematerialisation (gradient checkpointing) of each transformer block.

Without it, the backward pass keeps every intermediate of every block
(attention scores, the MLP's wide activations) from the forward pass. With
`remat="block"` each decoder block keeps only its input and recomputes the
rest during the backward pass (about one more forward: ~1.3x the step time
for ~1/num_layers of the activation memory); `remat="dots"` also keeps the
outputs of the block's projections and of its fused attention, so only the
element-wise work (and attention computed without the fused kernel) is
recomputed.

"dots" is `projections_and_fused_attention`: it keeps the outputs of matmuls
without batch dimensions (the projections: `btd,df->btf` has none; JAX's
`dots_with_no_batch_dims_saveable`) and of cuDNN attention's forward pass
(its output and softmax statistics, which its backward pass reads), not the
outputs of matmuls with batch dimensions (attention's `(batch, heads, seq,
seq)` score einsums, which keras-hub computes for Gemma 2's soft-capped
attention and wherever the fused kernel is not used). Measured on an H200,
8 rows x 1024 tokens (bench/NOTES.md):
- keeping the scores too (`dots_saveable`) cost Gemma 2 2B 3.2 GiB more and
  2% of its speed (recomputing them is cheaper than writing and reading
  them), Gemma 4 E2B 1.8 GiB more;
- keeping cuDNN attention's outputs won back the attention forward the
  backward pass otherwise runs again: Gemma 2B 1.00x the speed without remat
  (0.98x without them) for 0.5 GiB, Gemma 3 1B 0.97x (0.94x) for 0.4 GiB.
Against no remat, "dots" keeps 93-100% of the tokens/s and takes 19-35% off
the peak (Gemma 2B 22.8 -> 18.4 GiB, Gemma 2 2B 30.6 -> 19.9, Gemma 3 1B
16.0 -> 11.9, Gemma 4 E2B 39.3 -> 28.4).

`jax.checkpoint` is used directly: Keras 3.15's own mechanism
(`keras.RematScope` / `keras.remat`) takes no policy, and it is fixed when a
layer is *created* (the scope must be open while keras-hub builds the model
from its preset), whereas this wraps the blocks of an already-loaded model
for the duration of one traced call.

tests/test_remat.py checks equal losses and gradients with each setting.

Example:
>>> REMAT_CHOICES
('none', 'block', 'dots')
"""

import contextlib

import jax

from kerasgemma.config import REMAT_CHOICES
from kerasgemma.flash_attention import FORWARD_OUTPUTS as FLASH_FORWARD_OUTPUTS

# The primitive JAX's cuDNN attention binds for its forward pass (jax 0.10-0.11,
# jax/_src/cudnn/fused_attention_stablehlo.py; the kernel's own primitive is
# bound only inside its lowering): its outputs are the attention output and the
# softmax statistics its backward pass reads.
FUSED_ATTENTION_FORWARD = "dot_product_attention_fwd_wrapper"


def projections_and_fused_attention(prim, *avals, **params):
    """A `jax.checkpoint` policy: keep the projections' outputs and fused attention's forward outputs.

    Fused attention: cuDNN's (`FUSED_ATTENTION_FORWARD`) and kerasgemma's own
    flash kernel's (`kerasgemma.flash_attention.FORWARD_OUTPUTS`, a
    `checkpoint_name`).

    Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.ones((2, 4, 8))
    >>> jaxpr = jax.make_jaxpr(lambda x: jnp.einsum("btd,df->btf", x, jnp.ones((8, 3))))(x)
    >>> equation = jaxpr.eqns[-1]
    >>> projections_and_fused_attention(equation.primitive, **equation.params)
    True
    """
    if str(prim) == FUSED_ATTENTION_FORWARD or (str(prim) == "name" and params.get("name") == FLASH_FORWARD_OUTPUTS):
        return True
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *avals, **params)


# "none", "block", "dots" (`kerasgemma.config.REMAT_CHOICES`) -> jax.checkpoint policy.
REMAT_POLICIES = dict(zip(REMAT_CHOICES, (None, jax.checkpoint_policies.nothing_saveable,
                                          projections_and_fused_attention)))


def _is_array(value):
    return isinstance(value, (jax.Array, jax.core.Tracer))


def checkpointed(call, policy):
    """`call(*args, **kwargs)` under `jax.checkpoint(policy=...)`, its non-array arguments held static.

    Keras blocks take Python values too (`training=False`, `cache=None`);
    only the arrays go through `jax.checkpoint`.
    """

    def wrapped(*args, **kwargs):
        leaves, tree = jax.tree.flatten((args, kwargs), is_leaf=lambda value: value is None)
        positions = [index for index, leaf in enumerate(leaves) if _is_array(leaf)]

        def run(*arrays):
            filled = list(leaves)
            for index, array in zip(positions, arrays):
                filled[index] = array
            inner_args, inner_kwargs = jax.tree.unflatten(tree, filled)
            return call(*inner_args, **inner_kwargs)

        return jax.checkpoint(run, policy=policy)(*[leaves[index] for index in positions])

    return wrapped


@contextlib.contextmanager
def rematerialized_blocks(backbone, remat):
    """Run each of `backbone.transformer_layers` rematerialised inside the `with` block.

    Args:
        backbone: a keras-hub Gemma backbone.
        remat: "none", "block" or "dots" (`REMAT_POLICIES`).
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {REMAT_CHOICES}, got {remat!r}")
    policy = REMAT_POLICIES[remat]
    blocks = list(backbone.transformer_layers) if remat != "none" else []
    own = [block.__dict__.get("call") for block in blocks]
    for block in blocks:
        object.__setattr__(block, "call", checkpointed(block.call, policy))
    try:
        yield
    finally:
        for block, call in zip(blocks, own):
            if call is None:
                object.__delattr__(block, "call")
            else:
                object.__setattr__(block, "call", call)
