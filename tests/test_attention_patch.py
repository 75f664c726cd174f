"""Guard for the keras-hub internals `kerasgemma.attention` patches (issue 15, item 8).

`packed_attention` reaches into keras-hub 0.32's Gemma layers: it overrides
each decoder block's `_compute_attention_mask`, swaps each attention layer's
`rope_layer`, and (`causal_attention_op`) replaces `keras.ops.dot_product_attention`
for the whole process with a copy that passes `is_causal=True`. None of that
is public API. If keras-hub changes these functions the patch may silently stop
working (packed examples then attend to each other, or positions no longer
restart) or lose its speed-up. These tests fail loudly instead.
"""

import hashlib
import inspect

import keras
import numpy as np
import pytest
from keras_hub.src.layers.modeling import rotary_embedding
from keras_hub.src.models.gemma import gemma_attention, gemma_decoder_block
from keras_hub.src.models.gemma3 import gemma3_attention, gemma3_decoder_block

from kerasgemma.attention import packed_attention, segment_causal_mask

# sha256[:16] of the source of every keras-hub function the patch relies on,
# as in keras-hub 0.32.0. What each one must keep doing:
#   decoder block `call`: get the mask from `self._compute_attention_mask(...)`
#       (an instance attribute shadows it) and hand it to `self.attention`.
#   attention `call` / `_apply_rope`: rotate q and k through
#       `self.rope_layer(x, start_index=...)` (we swap that attribute).
#   attention `_compute_attention` / `_mask_sliding_window`: AND the sliding
#       window into the given mask, and call `ops.dot_product_attention` looked
#       up on the `keras.ops` module at call time (so our swap is seen).
#   `RotaryEmbedding.call`: accepts `positions=` (per-token positions).
PINNED_SOURCES = {
    (gemma_attention.CachedGemmaAttention, "call"): "d9363a7df8d0c753",
    (gemma_attention.CachedGemmaAttention, "_apply_rope"): "6cddedef760d33ef",
    (gemma_attention.CachedGemmaAttention, "_compute_attention"): "42f069d8da99ba70",
    (gemma_attention.CachedGemmaAttention, "_mask_sliding_window"): "57988cdefccf3895",
    (gemma3_attention.CachedGemma3Attention, "call"): "15a0843ccd20c9c4",
    (gemma3_attention.CachedGemma3Attention, "_apply_rope"): "cc730828a2499f2f",
    (gemma3_attention.CachedGemma3Attention, "_compute_attention"): "a39393beccf9e3cd",
    (gemma3_attention.CachedGemma3Attention, "_mask_sliding_window"): "733e6547c19e0be3",
    (gemma_decoder_block.GemmaDecoderBlock, "call"): "efb67b8ab50709ea",
    (gemma3_decoder_block.Gemma3DecoderBlock, "call"): "1324c896008ea23a",
    (rotary_embedding.RotaryEmbedding, "call"): "ce8d78c538ea1c9a",
}

RECHECK = (
    "keras-hub changed {name}, which kerasgemma/attention.py patches (packed_attention / "
    "causal_attention_op). Re-read the new source against the comment at the top of "
    "kerasgemma/attention.py: the decoder block must still take its mask from "
    "self._compute_attention_mask, the attention layer must still rotate through "
    "self.rope_layer(x, start_index=...) and call keras.ops.dot_product_attention by attribute. "
    "If it still holds, update the hash in tests/test_attention_patch.py; if not, packed "
    "training is wrong (examples attend to each other or positions do not restart)."
)


def source_hash(cls, name):
    return hashlib.sha256(inspect.getsource(getattr(cls, name)).encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "cls, name", sorted(PINNED_SOURCES, key=lambda key: (key[0].__qualname__, key[1])),
    ids=lambda value: value if isinstance(value, str) else value.__qualname__,
)
def test_patched_keras_hub_functions_are_unchanged(cls, name):
    assert source_hash(cls, name) == PINNED_SOURCES[(cls, name)], RECHECK.format(name=f"{cls.__module__}.{cls.__qualname__}.{name}")


def test_keras_hub_looks_up_the_attention_op_on_keras_ops():
    # `from keras import ops` in both modules: `ops.dot_product_attention` is an
    # attribute lookup on the module we patch. A `from keras.ops import
    # dot_product_attention` would bind the original and ignore the patch.
    for module in (gemma_attention, gemma3_attention):
        assert module.ops is keras.ops, RECHECK.format(name=module.__name__ + ".ops")
    assert "is_causal" in inspect.signature(keras.ops.dot_product_attention).parameters


# Gemma 2 shares CachedGemmaAttention._compute_attention with Gemma (pinned
# above); its logit soft cap reaches the fused op only on TPU, which JAX on CPU
# refuses, so it is not run here.
@pytest.mark.parametrize("architecture", ["gemma", "gemma3"])
def test_fused_op_gets_the_segment_mask_and_is_causal(architecture, monkeypatch, shared_tiny_lm):
    """On the fused path (GPU/TPU) the op sees `is_causal=True` and our mask, and the result is unchanged.

    On CPU keras-hub does not use the fused op, so it is forced here.
    """
    lm = shared_tiny_lm(architecture)  # packed_attention restores it; the class patch is undone by monkeypatch
    segment_ids = np.array([[1, 1, 1, 2, 2, 2, 0, 0]])
    inputs = {"token_ids": np.array([[2, 10, 11, 2, 12, 13, 0, 0]]), "padding_mask": segment_ids != 0}
    with packed_attention(lm.backbone, segment_ids):
        unfused = lm.backbone(inputs)

    calls = []
    real = keras.ops.dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    attention_cls = type(lm.backbone.transformer_layers[0].attention)
    monkeypatch.setattr(attention_cls, "_use_fused_attention_op", lambda self: True)
    monkeypatch.setattr(keras.ops, "dot_product_attention", spy)
    with packed_attention(lm.backbone, segment_ids):
        fused = lm.backbone(inputs)
    assert keras.ops.dot_product_attention is spy, "causal_attention_op did not restore keras.ops"

    assert len(calls) == lm.backbone.num_layers, (
        f"keras-hub's {attention_cls.__name__} no longer calls keras.ops.dot_product_attention once per layer "
        "on the fused path: " + RECHECK.format(name=attention_cls.__name__ + "._compute_attention")
    )
    segment_mask = np.asarray(segment_causal_mask(segment_ids))
    for kwargs in calls:
        assert kwargs.get("is_causal") is True
        mask = np.asarray(kwargs["mask"])
        assert mask.shape == (1, 1, 8, 8)
        # Our mask, possibly narrowed by a sliding window, never across examples.
        assert not (mask[0, 0] & ~segment_mask[0]).any(), "the op got a mask that is not packed_attention's"
        assert mask[0, 0].diagonal().all()
    if architecture == "gemma":  # no sliding window: exactly our mask
        assert all((np.asarray(kwargs["mask"])[0, 0] == segment_mask[0]).all() for kwargs in calls)
    real_rows = segment_ids[0] != 0
    np.testing.assert_allclose(np.asarray(fused)[0, real_rows], np.asarray(unfused)[0, real_rows], atol=1e-5)
