"""Attention that respects example boundaries in packed rows.

keras-hub's Gemma decoder blocks build their attention mask from a 1-D
`padding_mask` only (docs/facts.md#packing), so a packed row — several examples
side by side — would let each example attend to the ones before it.
`packed_attention` keeps keras-hub's layers and weights and makes every
block's mask the segment-causal mask: position i may attend to position j
iff j <= i and both belong to the same example
(`segment_ids[i] == segment_ids[j] != 0`).

Positions restart at 0 for every example: each attention layer's rotary
embedding gets per-token positions (`segment_positions`) instead of
0..seq-1, so an example packed after others is computed exactly as it would
be alone (RoPE is relative in exact arithmetic, but its bfloat16 sines and
cosines are not) and as it is at generation time. Sliding windows still
apply: Gemma 2/3 apply them inside keras-hub's attention layers, Gemma 4 in
the block's own mask, which is kept and intersected with the segment mask.
Gemma 4 also takes the positions as its `position_ids` input
(`kerasgemma.forward.backbone_inputs` passes the same restarting positions).
Gemma 4's KV-shared layers reuse an earlier layer's keys and values, computed
there at the same positions; their own block's mask still applies.

Three ways to compute the attention itself (`kernel=`):
- "dense" (CPU; GPUs where "flash" is not picked): keras-hub's own
  computation with the segment mask. The segment mask is causal, and the
  fused attention op is told so: keras-hub
  calls `keras.ops.dot_product_attention(..., mask=...)` without `is_causal`,
  so cuDNN computes every block of the score matrix and masks half of it
  away. Inside `packed_attention` the op also gets `is_causal=True`, which
  lets cuDNN skip the blocks above the diagonal (measured on an H200: +5%
  tokens/s for Gemma 2B and Gemma 3 1B, equal loss; bench/NOTES.md). The
  result is the same, since the mask already excludes those positions.
- "splash" (the default on a TPU, `kerasgemma.splash.splash_wanted`): each
  attention layer's `_compute_attention` is replaced by
  `kerasgemma.splash.splash_attention` (JAX's Pallas TPU Splash kernel) with
  the row's segment ids and the layer's query scale, sliding window and
  attention soft-cap; no `(seq, seq)` mask is built. On a TPU the dense path
  is XLA's masked O(seq^2) computation: keras 3.15 hands a traced mask (every
  mask inside `jax.jit`) to `jax.nn.dot_product_attention` and drops
  `attn_logits_soft_cap` on the way, so Gemma 2's attention soft-cap is lost
  there (docs/facts.md#splash). Splash skips the tiles above the diagonal and
  outside a sliding window; tiles across examples below the diagonal are
  computed and masked (`kerasgemma.splash` says why). Gemma 1, 2, 3 and 4
  take it alike, Gemma 4's KV-shared layers included (their borrowed keys
  and values reach `_compute_attention` like any others). Training is
  text-only, so the image-bidirectional part of Gemma 3/4's mask, which the
  splash path does not compute, never applies. Not measured on a TPU
  (bench/NOTES.md).
- "flash" (the default on an NVIDIA GPU from Hopper on,
  `kerasgemma.flash_attention.flash_wanted`): the same replacement of
  `_compute_attention`, with `kerasgemma.flash_attention.segment_flash_attention`
  (a Pallas Triton flash kernel) instead of Splash. It skips the key blocks
  outside each query block's example, and takes Gemma 2's soft-cap and the
  sliding windows in the kernel. Measured on an H200, 8 rows x 1024 tokens,
  against "dense" (bench/NOTES.md): +4% tokens/s on Gemma 2B, +8% on Gemma 3
  1B, +13% and 5.6 GiB less on Gemma 2 2B (whose soft-capped attention
  never takes cuDNN), +26% on Gemma 2B in rows of 4096; equal losses. Older
  GPUs (T4, A100) and Gemma 4 (512-wide global heads) keep "dense". In
  Pallas' interpret mode off a GPU.
"""

# KERAS-HUB INTERNALS. This module patches private parts of keras-hub 0.32
# (keras_hub/src/models/gemma/gemma_attention.py, gemma_decoder_block.py and
# their gemma3/ twins); tests/test_attention_patch.py pins their source and
# fails on any keras-hub upgrade that changes them. What breaks, and where:
# - If a decoder block's `call` stops taking its mask from
#   `self._compute_attention_mask(...)`, our override is ignored and packed
#   examples silently attend to the examples before them (loss still looks
#   fine; the model learns across example boundaries).
# - If the attention layers stop rotating q/k through
#   `self.rope_layer(x, start_index=...)`, positions no longer restart per
#   example: a packed example is computed differently than alone and than at
#   generation time (the packed-vs-alone tests in test_data_packing fail).
# - `causal_attention_op` replaces `keras.ops.dot_product_attention` for the
#   WHOLE PROCESS while the `with` block is open (all threads, every caller),
#   not just for this backbone. Anything else calling the op inside the block
#   gets `is_causal=True`; only use it around code whose masks are causal. If
#   keras-hub imports the op by name (`from keras.ops import ...`) instead of
#   looking it up on `keras.ops`, the hint is lost (results stay correct, the
#   ~5% GPU speed-up goes).
# - The splash and flash paths shadow each attention layer's `_compute_attention` and
#   recompute what it would from the layer's attributes: the query scale
#   (`query_head_dim_normalize`, `head_dim`, `hidden_dim`, `num_query_heads`;
#   1.0 for Gemma 4, which has no `query_head_dim_normalize`), the window
#   (`use_sliding_window_attention`, `sliding_window_size`, and Gemma 4's
#   `is_global_attention`) and `logit_soft_cap`. If keras-hub changes how it
#   scales, windows or caps, these paths compute another attention than
#   the dense one (the kernel-vs-dense tests in
#   tests/test_splash_attention.py fail on a CPU; a TPU or GPU run would not
#   notice). The blocks' mask becomes a `(batch, seq, 1)` all-true
#   placeholder: the attention layers' `call` must pass it only to
#   `_compute_attention` (ignored) and to their "no attended tokens" wipe
#   (never triggered: every token attends at least to itself).

import contextlib
import functools
import math

import jax.numpy as jnp
import keras

from kerasgemma.flash_attention import first_key_and_last_query
from kerasgemma.flash_attention import flash_wanted
from kerasgemma.flash_attention import segment_flash_attention
from kerasgemma.splash import splash_attention
from kerasgemma.splash import splash_wanted

KERNELS = ("auto", "dense", "splash", "flash")


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


def segment_positions(segment_ids):
    """Position of each token within its example, `(batch, seq)` int32.

    Example:
    >>> import numpy as np
    >>> np.asarray(segment_positions(np.array([[1, 1, 1, 2, 2, 0, 0]]))).tolist()
    [[0, 1, 2, 0, 1, 0, 1]]
    """
    segment_ids = jnp.asarray(segment_ids)
    index = jnp.broadcast_to(jnp.arange(segment_ids.shape[-1], dtype=jnp.int32), segment_ids.shape)
    example_start, _ = first_key_and_last_query(segment_ids)
    return index - example_start


@contextlib.contextmanager
def packed_attention(backbone, segment_ids, kernel="auto"):
    """Make every decoder block of `backbone` attend within examples only.

    Works while the model is traced or run inside the `with` block; the
    blocks are restored afterwards.

    Args:
        backbone: a keras-hub Gemma (1–4) backbone.
        segment_ids: `(batch, seq)` ints, one id per example, 0 for padding;
            each example's tokens contiguous, as `kerasgemma.data` packs
            them (the "flash" kernel's block bounds rely on it).
        kernel: str. "splash" (JAX's Pallas Splash kernel; in interpret mode
            off a TPU), "flash" (`segment_flash_attention`, a Pallas Triton
            kernel; in interpret mode off a GPU), "dense" (keras-hub's own
            attention with the segment mask), or "auto": `auto_kernel(backbone)`.

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
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}.")
    if kernel == "auto":
        kernel = auto_kernel(backbone)
    attend = {"splash": splash_attention, "flash": segment_flash_attention}.get(kernel)
    positions = segment_positions(segment_ids)
    blocks = backbone.transformer_layers
    ropes = [block.attention.rope_layer for block in blocks]
    if attend:
        within_examples, attention_op = _placeholder_attention_masks(segment_ids), contextlib.nullcontext
    else:
        within_examples, attention_op = _dense_attention_masks(segment_ids), causal_attention_op

    def restarting(rope):
        return lambda inputs, start_index=0, **kwargs: rope(inputs, positions=positions)

    for block, rope in zip(blocks, ropes):
        object.__setattr__(block, "_compute_attention_mask", within_examples(block._compute_attention_mask))
        object.__setattr__(block.attention, "rope_layer", restarting(rope))
        if attend:
            object.__setattr__(block.attention, "_compute_attention",
                               _kernel_compute_attention(block.attention, segment_ids, attend))
    try:
        with attention_op():
            yield
    finally:
        for block, rope in zip(blocks, ropes):
            object.__delattr__(block, "_compute_attention_mask")
            object.__setattr__(block.attention, "rope_layer", rope)
            if attend:
                object.__delattr__(block.attention, "_compute_attention")


def _dense_attention_masks(segment_ids):
    """`own_mask -> compute_attention_mask` for the dense path: the block's mask within examples."""
    mask = segment_causal_mask(segment_ids)
    eye = jnp.eye(mask.shape[-1], dtype=bool)

    def within_examples(own_mask):
        # The block's own mask (causal, and for Gemma 4's local layers the
        # sliding window, which Gemma 4 applies here rather than inside the
        # attention layer) narrowed to the example. Returning the segment
        # mask alone dropped Gemma 4's sliding window (measured: packed vs
        # alone max |diff| 2.1 on a tiny E-style model, window 4).
        def compute_attention_mask(*args, **kwargs):
            own = jnp.asarray(own_mask(*args, **kwargs)).astype(bool)
            return (own & mask) | eye

        return compute_attention_mask

    return within_examples


def auto_kernel(backbone):
    """The kernel `packed_attention(kernel="auto")` runs for `backbone`.

    "splash" on a TPU (`splash_wanted`), "flash" where `flash_wanted` (a
    Hopper or later NVIDIA GPU, head dims up to 256, 16-bit compute), else
    "dense".

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> auto_kernel(build_tiny_causal_lm("gemma").backbone)  # the tests run on a CPU
    'dense'
    """
    if splash_wanted():
        return "splash"
    return "flash" if flash_wanted(backbone) else "dense"


def _placeholder_attention_masks(segment_ids):
    """`own_mask -> compute_attention_mask` for the kernel paths: an all-true `(batch, seq, 1)` placeholder.

    A kernel's `_compute_attention` ignores the mask; the placeholder keeps
    keras-hub's "no attended tokens" wipe from building a `(seq, seq)` mask.
    """
    placeholder = jnp.ones((*jnp.shape(segment_ids), 1), dtype=bool)
    return lambda own_mask: lambda *args, **kwargs: placeholder


def _kernel_compute_attention(attention, segment_ids, attend):
    """A `_compute_attention` for keras-hub `attention` layer that runs `attend` (`splash_attention`'s signature)."""
    if not hasattr(attention, "query_head_dim_normalize"):
        scale = 1.0  # Gemma 4: its query and key norms replace the scale
    elif attention.query_head_dim_normalize:
        scale = 1 / math.sqrt(attention.head_dim)
    else:
        scale = 1 / math.sqrt(attention.hidden_dim // attention.num_query_heads)
    # Gemma 4 marks its global layers `is_global_attention` and windows the rest.
    local = attention.use_sliding_window_attention and not getattr(attention, "is_global_attention", False)
    window = attention.sliding_window_size if local else None

    def compute_attention(query, key, value, attention_mask, training=False, cache_update_index=0):
        return attend(query, key, value, segment_ids, scale, attention.logit_soft_cap, window)

    return compute_attention


@contextlib.contextmanager
def causal_attention_op():
    """Call `keras.ops.dot_product_attention` with `is_causal=True` inside the block.

    Only for masks that are causal already (so the result is unchanged): the
    flag lets the fused cuDNN kernel skip the blocks above the diagonal.
    keras-hub's attention layers look the op up on `keras.ops` at call time.

    Example:
    >>> import numpy as np
    >>> q = np.random.default_rng(0).normal(size=(1, 4, 2, 8)).astype("float32")
    >>> mask = np.tril(np.ones((4, 4), bool))[None, None]
    >>> with causal_attention_op():
    ...     hinted = keras.ops.dot_product_attention(q, q, q, mask=mask)
    >>> plain = keras.ops.dot_product_attention(q, q, q, mask=mask)
    >>> bool(np.allclose(hinted, plain, atol=1e-6))
    True
    """
    dense = keras.ops.dot_product_attention
    keras.ops.dot_product_attention = functools.partial(dense, is_causal=True)
    try:
        yield
    finally:
        keras.ops.dot_product_attention = dense
