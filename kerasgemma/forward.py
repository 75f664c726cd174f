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
from kerasgemma.attention import segment_positions
from kerasgemma.quantization import dequantized_embeddings
from kerasgemma.remat import rematerialized_blocks

# Tokens per slice of the vocabulary projection in `fused_cross_entropy`:
# 1024 tokens x 256k vocabulary x 4 bytes = 1 GiB of float32 logits (and as
# much for their exp) at a time, instead of 8 GiB for 8 x 1024 tokens at once.
# Measured on an H200, 8 x 1024 tokens (bench/NOTES.md): slices of 1024
# instead of 2048 took 1.5 GiB off the peak at equal speed on Gemma 2B and
# Gemma 3 1B; 512 took 0.7 GiB more for 1-2% of the tokens/s.
LOSS_CHUNK_TOKENS = 1024


# Backbone inputs that carry text; every other input of a multimodal backbone
# (Gemma 3 4B+, every Gemma 4 preset) is an image or audio input, given empty.
TEXT_INPUTS = ("token_ids", "padding_mask", "position_ids")
# Per-token media masks: one entry per text position, all 0 (no media token).
PER_TOKEN_MEDIA_MASKS = ("vision_mask", "audio_mask")
# Mel frames of the (zero) audio clips; any length works with 0 clips.
EMPTY_AUDIO_FRAMES = 8


def _patches(backbone):
    encoder = backbone.vision_encoder
    return (encoder.image_size // encoder.patch_size) ** 2


# Shapes of one image or clip where the backbone's input leaves them open.
MEDIA_ITEM_SHAPES = {
    "pixel_values": lambda bb: (_patches(bb), 3 * bb.vision_encoder.patch_size**2),
    "pixel_position_ids": lambda bb: (_patches(bb), 2),
    "audio_mel": lambda bb: (EMPTY_AUDIO_FRAMES, bb.audio_encoder.input_feat_size),
    "audio_mel_mask": lambda bb: (EMPTY_AUDIO_FRAMES,),
}


def empty_media_inputs(backbone, batch_size, length):
    """Zero images and zero audio clips for a multimodal backbone's text-only call.

    keras-hub's multimodal backbones (Gemma 3 with a vision encoder, Gemma 4
    with vision and/or audio) declare their media inputs as required. Given
    no image (a count of 0 along axis 1) and all-zero media masks, the towers
    run on nothing and the text positions are the text embeddings alone:
    training on text never touches them (they are frozen and get no LoRA,
    see `kerasgemma.model.enable_lora`).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> empty_media_inputs(build_tiny_causal_lm("gemma3").backbone, 2, 4)
    {}
    """
    inputs = backbone.input if isinstance(backbone.input, dict) else {}
    empty = {}
    for name, spec in inputs.items():
        if name in TEXT_INPUTS:
            continue
        if name in PER_TOKEN_MEDIA_MASKS:
            empty[name] = jnp.zeros((batch_size, length), "int32")
            continue
        item = MEDIA_ITEM_SHAPES[name](backbone) if name in MEDIA_ITEM_SHAPES else tuple(spec.shape[2:])
        empty[name] = jnp.zeros((batch_size, 0, *(dim or 1 for dim in item)), spec.dtype)
    return empty


def backbone_inputs(backbone, batch):
    """The backbone's inputs for a packed text batch.

    `token_ids` and `padding_mask` for every Gemma; `position_ids` (restarting
    at 0 in each example, `segment_positions`) where the backbone takes them
    (Gemma 4; Gemma 1–3 get the same positions through `packed_attention`);
    empty media inputs for multimodal backbones (`empty_media_inputs`).

    Example:
    >>> import numpy as np
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> backbone = build_tiny_causal_lm("gemma4").backbone
    >>> inputs = backbone_inputs(backbone, {"token_ids": np.array([[2, 5, 2, 6]]),
    ...                                     "segment_ids": np.array([[1, 1, 2, 2]])})
    >>> np.asarray(inputs["position_ids"]).tolist()
    [[0, 1, 0, 1]]
    """
    token_ids, segment_ids = batch["token_ids"], batch["segment_ids"]
    inputs = {"token_ids": token_ids, "padding_mask": segment_ids != 0}
    names = backbone.input.keys() if isinstance(backbone.input, dict) else ()
    if "position_ids" in names:
        inputs["position_ids"] = segment_positions(segment_ids)
    inputs.update(empty_media_inputs(backbone, *token_ids.shape))
    return inputs


def logits_fn(causal_lm, trainable_values, non_trainable_values, batch):
    """Logits `(batch, seq, vocab)` of a stateless, segment-aware forward.

    Args:
        causal_lm: a keras-hub `GemmaCausalLM`, `Gemma3CausalLM` or
            `Gemma4CausalLM` (text-only or multimodal).
        trainable_values: list of arrays for `causal_lm.trainable_variables`.
        non_trainable_values: list of arrays for the non-trainable variables.
        batch: dict with `token_ids` and `segment_ids`, both `(batch, seq)`.
    """
    inputs = backbone_inputs(causal_lm.backbone, batch)
    with packed_attention(causal_lm.backbone, batch["segment_ids"]):
        logits, _ = causal_lm.stateless_call(
            trainable_values, non_trainable_values, inputs, training=False
        )
    return logits


def hidden_states_fn(causal_lm, trainable_values, non_trainable_values, batch, remat="none"):
    """Final hidden states `(batch, seq, hidden)` and the (tied) embedding matrix.

    The same segment-aware forward as `logits_fn`, stopped before the
    vocabulary projection so the loss can do that projection in slices.
    `remat`: rematerialise each block ("none", "block", "dots"; see
    `kerasgemma.remat`). A quantized embedding (`TrainConfig.quantize`) is
    dequantized to the compute dtype for the projection.
    """
    variables = causal_lm.trainable_variables + causal_lm.non_trainable_variables
    values = list(trainable_values) + list(non_trainable_values)
    backbone = causal_lm.backbone
    inputs = backbone_inputs(backbone, batch)
    with keras.StatelessScope(state_mapping=list(zip(variables, values))):
        with packed_attention(backbone, batch["segment_ids"]), rematerialized_blocks(backbone, remat):
            hidden = backbone(inputs, training=False)
        embedding = backbone.token_embedding
        if embedding.tie_weights:
            matrix = jnp.asarray(dequantized_embeddings(embedding))  # (vocab, hidden)
        elif embedding.quantization_mode is not None:
            raise NotImplementedError("A quantized untied output projection is not supported (Gemma ties it).")
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_cross_entropy(hidden, matrix, target_ids, loss_mask, soft_cap=None, chunk_tokens=LOSS_CHUNK_TOKENS):
    """Per-token cross-entropy of `hidden @ matrix.T` without the full logits, on loss-carrying tokens only.

    The reference computation materialises float32 logits for the whole
    batch (8 GiB for 8 x 1024 tokens over Gemma's 256k vocabulary) and keeps
    them for the backward pass. Here the projection runs over slices of about
    `chunk_tokens` tokens a device and the gradient with respect to `hidden`
    is formed in the same pass, so neither the logits nor a recomputation is
    needed. `matrix` (the frozen embedding) gets no gradient.

    Prompt tokens carry no loss, yet their vocabulary projection costs as much
    as an answer token's. So the loss-carrying tokens (`loss_mask`) of each
    device's rows are moved to the front of those rows' tokens, in order, and
    the loop over slices stops after the last slice holding one. A batch split
    over devices by rows (data parallel) stays split: each device sorts and
    projects its own rows (slicing across devices' rows makes XLA gather the
    batch onto every device: docs/facts.md#loss-sharding). The result is 0
    where `loss_mask` is False, and so is its gradient.

    Args:
        hidden: `(batch, seq, hidden)` final hidden states.
        matrix: `(vocabulary, hidden)` output projection.
        target_ids: `(batch, seq)` int target ids.
        loss_mask: `(batch, seq)` bool, True where the token carries a loss.
        soft_cap: the final logit soft-cap, or None.
        chunk_tokens: about how many tokens one slice projects per device.

    Example:
    >>> import numpy as np
    >>> h = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    >>> m = np.random.default_rng(1).normal(size=(7, 4)).astype("float32")
    >>> t = np.array([[1, 2, 3], [4, 5, 6]])
    >>> mask = np.array([[False, True, True], [False, False, True]])
    >>> reference = cross_entropy(np.einsum("bsd,vd->bsv", h, m), t) * mask
    >>> bool(np.allclose(fused_cross_entropy(h, m, t, mask, None, 2), reference, atol=1e-5))
    True
    """
    return _fused_forward(hidden, matrix, target_ids, loss_mask, soft_cap, chunk_tokens)[0]


def _row_groups(rows):
    """How many devices a batch's rows are split over by the keras distribution in force (1 without one).

    1 too where the rows do not split evenly: the sort then spans the whole batch.
    """
    # Imported here: kerasgemma.distribution's memory plan imports this module.
    from kerasgemma.distribution.layout import data_parallel_degree

    shards = data_parallel_degree()
    return shards if rows % shards == 0 else 1


def _fused_forward(hidden, matrix, target_ids, loss_mask, soft_cap, chunk_tokens):
    # One group of tokens per device: its rows, end to end.
    groups = _row_groups(target_ids.shape[0])
    group_hidden = hidden.reshape(groups, -1, hidden.shape[-1])
    group_targets = target_ids.reshape(groups, -1)
    group_mask = jnp.asarray(loss_mask, bool).reshape(groups, -1)
    length = group_targets.shape[1]
    order = jnp.argsort(~group_mask, axis=1, stable=True)  # loss-carrying tokens first, in order
    width = min(length, chunk_tokens)
    slices = -(-length // width)
    pad = slices * width - length
    sorted_hidden = jnp.pad(jnp.take_along_axis(group_hidden, order[..., None], axis=1), ((0, 0), (0, pad), (0, 0)))
    sorted_targets = jnp.pad(jnp.take_along_axis(group_targets, order, axis=1), ((0, 0), (0, pad)))
    needed = -(-jnp.max(jnp.sum(group_mask, axis=1)) // width)

    def project_slice(index, carry):
        losses, grads = carry
        start = index * width
        slice_hidden = jax.lax.dynamic_slice_in_dim(sorted_hidden, start, width, axis=1)
        slice_targets = jax.lax.dynamic_slice_in_dim(sorted_targets, start, width, axis=1)
        slice_losses, slice_grads = _chunk_losses_and_grads(
            slice_hidden.reshape(-1, hidden.shape[-1]), matrix, slice_targets.reshape(-1), soft_cap
        )
        losses = jax.lax.dynamic_update_slice_in_dim(losses, slice_losses.reshape(groups, width), start, axis=1)
        grads = jax.lax.dynamic_update_slice_in_dim(grads, slice_grads.reshape(groups, width, -1), start, axis=1)
        return losses, grads

    empty = (jnp.zeros(sorted_targets.shape, jnp.float32), jnp.zeros(sorted_hidden.shape, hidden.dtype))
    sorted_losses, sorted_grads = jax.lax.fori_loop(0, needed, project_slice, empty)
    unsort = jnp.argsort(order, axis=1)
    losses = jnp.take_along_axis(sorted_losses[:, :length], unsort, axis=1)
    grads = jnp.take_along_axis(sorted_grads[:, :length], unsort[..., None], axis=1)
    losses = jnp.where(group_mask, losses, 0.0).reshape(target_ids.shape)
    grads = jnp.where(group_mask[..., None], grads, 0).astype(hidden.dtype).reshape(hidden.shape)
    return losses, grads


def _fused_vjp_forward(hidden, matrix, target_ids, loss_mask, soft_cap, chunk_tokens):
    losses, grads = _fused_forward(hidden, matrix, target_ids, loss_mask, soft_cap, chunk_tokens)
    return losses, (grads, matrix)


def _fused_vjp_backward(soft_cap, chunk_tokens, residuals, upstream):
    grads, matrix = residuals
    grad_hidden = (grads.astype(jnp.float32) * upstream[..., None]).astype(grads.dtype)
    return grad_hidden, jnp.zeros_like(matrix), None, None


fused_cross_entropy.defvjp(_fused_vjp_forward, _fused_vjp_backward)


def per_token_loss(causal_lm, trainable_values, non_trainable_values, batch, remat="none"):
    """Per-token cross-entropy `(batch, seq)` through the fused, sliced loss, 0 where `loss_weights` is 0.

    `remat`: see `hidden_states_fn`.
    """
    hidden, matrix, soft_cap = hidden_states_fn(causal_lm, trainable_values, non_trainable_values, batch, remat)
    with jax.named_scope("fused_cross_entropy"):  # the loss's share of a profile (bench/levers.py --profile)
        return fused_cross_entropy(
            hidden, jax.lax.stop_gradient(matrix), batch["target_ids"], batch["loss_weights"] != 0, soft_cap,
            LOSS_CHUNK_TOKENS,
        )


def cross_entropy(logits, target_ids):
    """Per-token cross-entropy in float32, shape `(batch, seq)`."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, target_ids[..., None], axis=-1)
    return log_z - target_logits[..., 0]


def token_losses(causal_lm, batch):
    """Unweighted per-token cross-entropy `(batch, seq)` of a batch.

    Compiled as one XLA program per call (op-by-op dispatch is ~6x slower on
    CPU); each call traces afresh, so it always sees the attention path in
    force at that moment.

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

    def losses(trainable_values, non_trainable_values, batch):
        logits = logits_fn(causal_lm, trainable_values, non_trainable_values, batch)
        return cross_entropy(logits, batch["target_ids"])

    trainable = [v.value for v in causal_lm.trainable_variables]
    non_trainable = [v.value for v in causal_lm.non_trainable_variables]
    batch = {key: jnp.asarray(value) for key, value in batch.items()}
    return jax.jit(losses)(trainable, non_trainable, batch)
