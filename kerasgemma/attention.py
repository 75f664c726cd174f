"""Attention that respects example boundaries in packed rows.

keras-hub's Gemma decoder blocks build their attention mask from a 1-D
`padding_mask` only (shared DESIGN.md), so a packed row — several examples
side by side — would let each example attend to the ones before it.
`packed_attention` keeps keras-hub's layers and weights and makes every
block's mask the segment-causal mask: position i may attend to position j
iff j <= i and both belong to the same example
(`segment_ids[i] == segment_ids[j] != 0`).

`implementation="causal"` (opt-in, GPU only) also has the attention layers
that keras-hub runs through cuDNN (no logit soft-cap) call cuDNN with the
causal mask type plus the segment mask, so cuDNN may skip the blocks above
the diagonal instead of computing the whole `seq x seq` square. The default,
"dense", is keras-hub's own path; bench/levers.py compares the two.

Sliding windows (Gemma 2/3 local layers) are kept on every path. RoPE is
relative, so with cross-example attention masked out positions need not
restart per example.
"""

import contextlib

from kerasgemma.backend import ensure_jax_backend

ensure_jax_backend()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

IMPLEMENTATIONS = {
    "dense": "keras-hub's attention with a dense (batch, seq, seq) segment mask",
    "causal": "cuDNN flash attention, causal mask type plus the dense segment mask (skips blocks above the diagonal)",
}
# jax.nn.dot_product_attention implementation of the "causal" path (tests on
# CPU swap in "xla" to check the wiring of scale, window and mask).
CAUSAL_KERNEL = "cudnn"


def segment_causal_mask(segment_ids):
    """Attention mask `(batch, seq, seq)` for packed rows.

    Padding positions (segment 0) attend only to themselves so that no row of
    the softmax is empty; their outputs carry no loss.

    Example:
    >>> import numpy as np
    >>> mask = segment_causal_mask(np.array([[1, 1, 2, 0]]))
    >>> np.asarray(mask[0]).astype(int).tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    """
    segment_ids = jnp.asarray(segment_ids)
    length = segment_ids.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids != 0)[:, :, None]
    eye = jnp.eye(length, dtype=bool)
    return (same & real & causal) | eye


def _on_gpu():
    return jax.default_backend() == "gpu"


def resolve_implementation(implementation="auto"):
    """The attention path to use: "auto" is "dense" (see the module docstring).

    Example:
    >>> resolve_implementation("auto")
    'dense'
    """
    if implementation not in ("auto", *IMPLEMENTATIONS):
        raise ValueError(f"Unknown attention implementation {implementation!r}; use auto or one of {sorted(IMPLEMENTATIONS)}.")
    return "dense" if implementation == "auto" else implementation


def _scale(layer):
    if layer.query_head_dim_normalize:
        return 1.0 / np.sqrt(layer.head_dim)
    return 1.0 / np.sqrt(layer.hidden_dim // layer.num_query_heads)


def _window(layer):
    return layer.sliding_window_size if layer.use_sliding_window_attention else None


def _cudnn_causal(layer, q, k, v, mask):
    window = _window(layer)
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask[:, None], scale=_scale(layer), is_causal=True,
        local_window_size=None if window is None else (window - 1, 0), implementation=CAUSAL_KERNEL,
    )


def _attention_override(layer, implementation, mask, segment_ids):
    """A `_compute_attention` for `layer`, or None where keras-hub's own is kept."""
    if implementation == "dense" or not layer._use_fused_attention_op():
        return None
    return lambda q, k, v, attention_mask, training=False, cache_update_index=0: _cudnn_causal(layer, q, k, v, mask)


@contextlib.contextmanager
def packed_attention(backbone, segment_ids, implementation="auto"):
    """Make every decoder block of `backbone` attend within examples only.

    Works while the model is traced or run inside the `with` block; the
    blocks are restored afterwards. `implementation`: "auto" or a key of
    `IMPLEMENTATIONS`; the GPU paths apply to layers keras-hub would run
    through cuDNN, others keep the dense mask.

    Example:
    >>> import numpy as np
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma")
    >>> inputs = {"token_ids": np.array([[2, 10, 2, 11]]), "padding_mask": np.ones((1, 4), bool)}
    >>> with packed_attention(lm.backbone, np.array([[1, 1, 2, 2]])):
    ...     packed = lm.backbone(inputs)
    >>> alone = lm.backbone({"token_ids": np.array([[2, 11]]), "padding_mask": np.ones((1, 2), bool)})
    >>> bool(np.allclose(packed[0, 3], alone[0, 1], atol=1e-5))
    True
    """
    implementation = resolve_implementation(implementation)
    mask = segment_causal_mask(segment_ids)
    blocks = backbone.transformer_layers
    overridden = []
    if implementation != "dense" and CAUSAL_KERNEL == "cudnn" and not _on_gpu():
        raise ValueError(f"Attention implementation {implementation!r} needs a GPU (cuDNN); this backend is {jax.default_backend()}.")

    def compute_attention_mask(*args, **kwargs):
        return mask

    for block in blocks:
        object.__setattr__(block, "_compute_attention_mask", compute_attention_mask)
        override = _attention_override(block.attention, implementation, mask, segment_ids)
        if override is not None:
            object.__setattr__(block.attention, "_compute_attention", override)
            overridden.append(block.attention)
    try:
        yield
    finally:
        for block in blocks:
            object.__delattr__(block, "_compute_attention_mask")
        for layer in overridden:
            object.__delattr__(layer, "_compute_attention")
