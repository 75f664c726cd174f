"""Segment-aware forward pass and per-token loss for keras-hub Gemma models.

keras-hub's Gemma decoder blocks build their attention mask from a 1-D
`padding_mask` only (shared DESIGN.md), so a packed row — several examples
side by side — would let each example attend to the ones before it. We keep
keras-hub's layers and weights as they are and swap in one mask per call:
position i may attend to position j iff j <= i and both belong to the same
example (`segment_ids[i] == segment_ids[j] != 0`). Sliding-window limits are
still applied inside keras-hub's attention layers. RoPE is relative, so with
cross-example attention masked out positions need not restart per example.
"""

import contextlib

from kerasgemma.backend import ensure_jax_backend

ensure_jax_backend()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


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


@contextlib.contextmanager
def packed_attention(backbone, segment_ids):
    """Make every decoder block of `backbone` use the packed mask.

    Works while the model is traced or run inside the `with` block; the
    blocks are restored afterwards.
    """
    mask = segment_causal_mask(segment_ids)
    blocks = backbone.transformer_layers

    def compute_attention_mask(*args, **kwargs):
        return mask

    for block in blocks:
        object.__setattr__(block, "_compute_attention_mask", compute_attention_mask)
    try:
        yield
    finally:
        for block in blocks:
            object.__delattr__(block, "_compute_attention_mask")


def logits_fn(causal_lm, trainable_values, non_trainable_values, batch):
    """Logits `(batch, seq, vocab)` of a stateless, segment-aware forward.

    Args:
        causal_lm: a keras-hub `GemmaCausalLM` or `Gemma3CausalLM`.
        trainable_values: list of arrays for `causal_lm.trainable_variables`.
        non_trainable_values: list of arrays for the non-trainable variables.
        batch: dict with `token_ids` and `segment_ids`, both `(batch, seq)`.
    """
    inputs = {
        "token_ids": batch["token_ids"],
        "padding_mask": batch["segment_ids"] != 0,
    }
    with packed_attention(causal_lm.backbone, batch["segment_ids"]):
        logits, _ = causal_lm.stateless_call(
            trainable_values, non_trainable_values, inputs, training=False
        )
    return logits


def cross_entropy(logits, target_ids):
    """Per-token cross-entropy in float32, shape `(batch, seq)`."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, target_ids[..., None], axis=-1)
    return log_z - target_logits[..., 0]


def token_losses(causal_lm, batch):
    """Unweighted per-token cross-entropy `(batch, seq)` of a batch.

    Args:
        causal_lm: a keras-hub Gemma causal LM.
        batch: dict of `(batch, seq)` arrays `token_ids`, `target_ids`,
            `segment_ids` (see `kerasgemma.data`).

    Example:
    >>> import numpy as np
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma")
    >>> batch = {"token_ids": np.array([[2, 10, 11, 12]]),
    ...          "target_ids": np.array([[10, 11, 12, 1]]),
    ...          "segment_ids": np.array([[1, 1, 1, 1]])}
    >>> token_losses(lm, batch).shape
    (1, 4)
    """
    trainable = [v.value for v in causal_lm.trainable_variables]
    non_trainable = [v.value for v in causal_lm.non_trainable_variables]
    batch = {key: jnp.asarray(value) for key, value in batch.items()}
    logits = logits_fn(causal_lm, trainable, non_trainable, batch)
    return cross_entropy(logits, batch["target_ids"])
