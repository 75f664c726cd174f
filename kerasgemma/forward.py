"""Segment-aware forward pass and per-token loss for keras-hub Gemma models.

The forward pass is keras-hub's own, run statelessly, with attention kept
inside each packed example (`kerasgemma.attention.packed_attention`). The
loss projects onto the vocabulary in slices (`fused_cross_entropy`).
"""

import functools

import jax
import jax.numpy as jnp
import keras

from kerasgemma.attention import packed_attention

# Tokens per slice of the vocabulary projection in `fused_cross_entropy`:
# 2048 tokens x 256k vocabulary x 4 bytes = 2 GiB of float32 logits at a time
# instead of 8 GiB for a batch of 8 x 1024 tokens.
LOSS_CHUNK_TOKENS = 2048


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


def hidden_states_fn(causal_lm, trainable_values, non_trainable_values, batch):
    """Final hidden states `(batch, seq, hidden)` and the (tied) embedding matrix.

    The same segment-aware forward as `logits_fn`, stopped before the
    vocabulary projection so the loss can do that projection in slices.
    """
    variables = causal_lm.trainable_variables + causal_lm.non_trainable_variables
    values = list(trainable_values) + list(non_trainable_values)
    backbone = causal_lm.backbone
    inputs = {
        "token_ids": batch["token_ids"],
        "padding_mask": batch["segment_ids"] != 0,
    }
    with keras.StatelessScope(state_mapping=list(zip(variables, values))):
        with packed_attention(backbone, batch["segment_ids"]):
            hidden = backbone(inputs, training=False)
        embedding = backbone.token_embedding
        if embedding.tie_weights:
            matrix = jnp.asarray(embedding.embeddings)  # (vocab, hidden)
        else:
            matrix = jnp.transpose(jnp.asarray(embedding.reverse_embeddings))
        matrix = matrix.astype(hidden.dtype)
    return hidden, matrix, embedding.logit_soft_cap


def _chunk_losses_and_grads(hidden, matrix, targets, soft_cap):
    """Loss and d(loss)/d(hidden) of one slice of tokens, in float32."""
    logits = jnp.dot(hidden, matrix.T, preferred_element_type=jnp.float32)
    if soft_cap is not None:
        capped = jnp.tanh(logits / soft_cap)
        logits = capped * soft_cap
    log_z = jax.nn.logsumexp(logits, axis=-1)
    losses = log_z - jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    # softmax - one_hot(target), written as a select rather than a scatter so
    # that XLA fuses it with the exp and the cast into one pass over the slice.
    probabilities = jnp.exp(logits - log_z[:, None])
    is_target = jnp.arange(logits.shape[-1])[None, :] == targets[:, None]
    grad_logits = jnp.where(is_target, probabilities - 1.0, probabilities)
    if soft_cap is not None:
        grad_logits = grad_logits * (1.0 - capped * capped)
    grad_hidden = jnp.dot(grad_logits.astype(matrix.dtype), matrix, preferred_element_type=jnp.float32)
    return losses, grad_hidden.astype(hidden.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def fused_cross_entropy(hidden, matrix, target_ids, soft_cap=None, chunk_tokens=LOSS_CHUNK_TOKENS):
    """Per-token cross-entropy of `hidden @ matrix.T` without the full logits.

    The reference computation materialises float32 logits for the whole
    batch (8 GiB for 8 x 1024 tokens over Gemma's 256k vocabulary) and keeps
    them for the backward pass. Here the projection runs over slices of
    `chunk_tokens` tokens and the gradient with respect to `hidden` is formed
    in the same pass, so neither the logits nor a recomputation is needed.
    `matrix` (the frozen embedding) gets no gradient.

    Example:
    >>> import numpy as np
    >>> h = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    >>> m = np.random.default_rng(1).normal(size=(7, 4)).astype("float32")
    >>> t = np.array([[1, 2, 3], [4, 5, 6]])
    >>> reference = cross_entropy(np.einsum("bsd,vd->bsv", h, m), t)
    >>> bool(np.allclose(fused_cross_entropy(h, m, t, None, 4), reference, atol=1e-5))
    True
    """
    return _fused_forward(hidden, matrix, target_ids, soft_cap, chunk_tokens)[0]


def _fused_forward(hidden, matrix, target_ids, soft_cap, chunk_tokens):
    shape = target_ids.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = target_ids.reshape(-1)
    count = flat_targets.shape[0]
    chunk = min(chunk_tokens, count)
    pad = (-count) % chunk
    flat_hidden = jnp.pad(flat_hidden, ((0, pad), (0, 0)))
    flat_targets = jnp.pad(flat_targets, (0, pad))
    chunks = (
        flat_hidden.reshape(-1, chunk, flat_hidden.shape[-1]),
        flat_targets.reshape(-1, chunk),
    )
    losses, grads = jax.lax.map(lambda xs: _chunk_losses_and_grads(xs[0], matrix, xs[1], soft_cap), chunks)
    losses = losses.reshape(-1)[:count].reshape(shape)
    grads = grads.reshape(-1, hidden.shape[-1])[:count].reshape(hidden.shape)
    return losses, grads


def _fused_vjp_forward(hidden, matrix, target_ids, soft_cap, chunk_tokens):
    losses, grads = _fused_forward(hidden, matrix, target_ids, soft_cap, chunk_tokens)
    return losses, (grads, matrix, target_ids)


def _fused_vjp_backward(soft_cap, chunk_tokens, residuals, upstream):
    grads, matrix, target_ids = residuals
    grad_hidden = (grads.astype(jnp.float32) * upstream[..., None]).astype(grads.dtype)
    return grad_hidden, jnp.zeros_like(matrix), None


fused_cross_entropy.defvjp(_fused_vjp_forward, _fused_vjp_backward)


def per_token_loss(causal_lm, trainable_values, non_trainable_values, batch):
    """Per-token cross-entropy `(batch, seq)` through the fused, sliced loss."""
    hidden, matrix, soft_cap = hidden_states_fn(causal_lm, trainable_values, non_trainable_values, batch)
    return fused_cross_entropy(hidden, jax.lax.stop_gradient(matrix), batch["target_ids"], soft_cap)


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
