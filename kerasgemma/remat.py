"""Rematerialisation (gradient checkpointing) of each transformer block.

Without it, the backward pass keeps every intermediate of every block
(attention scores, the MLP's wide activations) from the forward pass. With
`remat="block"` each decoder block keeps only its input and recomputes the
rest during the backward pass (about one more forward: ~1.3x the step time
for ~1/num_layers of the activation memory); `remat="dots"` also keeps the
outputs of the block's projections, so only the element-wise work and the
attention are recomputed.

"dots" is `jax.checkpoint_policies.dots_with_no_batch_dims_saveable`: it
keeps the outputs of matmuls without batch dimensions (the projections:
`btd,df->btf` has none), not those with (attention's `(batch, heads, seq,
seq)` score einsums, which keras-hub computes for Gemma 2's soft-capped
attention and everywhere off a GPU). Measured on an H200 against
`dots_saveable` (which keeps those scores too), 8 rows x 1024 tokens,
bench/NOTES.md: Gemma 2 2B 21.9 vs 25.1 GiB and 39.1k vs 38.2k tokens/s (the
scores are cheaper to recompute than to keep); Gemma 4 E2B 29.5 vs 31.3 GiB
at equal speed; Gemma 2B and Gemma 3 1B the same memory (cuDNN's fused
attention writes no scores there). Against no remat, "dots" costs 3-7% of
the tokens/s and saves 21-35% of the peak memory (Gemma 2B 22.8 -> 17.9 GiB,
Gemma 2 2B 30.6 -> 19.9, Gemma 3 1B 16.0 -> 11.5, Gemma 4 E2B 39.3 -> 27.5).

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

# "none", "block", "dots" (`kerasgemma.config.REMAT_CHOICES`) -> jax.checkpoint policy.
REMAT_POLICIES = dict(zip(REMAT_CHOICES, (None, jax.checkpoint_policies.nothing_saveable,
                                          jax.checkpoint_policies.dots_with_no_batch_dims_saveable)))


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
