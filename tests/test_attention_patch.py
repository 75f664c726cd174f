"""Guard for the keras-hub internals `kerasgemma.attention` patches (issue 15, item 8).

`packed_attention` reaches into keras-hub 0.32's Gemma layers: it overrides
each decoder block's `_compute_attention_mask`, swaps each attention layer's
`rope_layer`, and (`causal_attention_op`) replaces `keras.ops.dot_product_attention`
for the whole process with a copy that passes `is_causal=True`; on the splash
path (TPU) it shadows each attention layer's `_compute_attention` and gives
the blocks a placeholder mask. None of that is public API. If keras-hub changes these functions the patch may silently stop
working (packed examples then attend to each other, or positions no longer
restart) or lose its speed-up. These tests fail loudly instead.
"""

import hashlib
import inspect

import keras
import pytest
from keras_hub.src.layers.modeling import rotary_embedding
from keras_hub.src.models.gemma import gemma_attention, gemma_decoder_block
from keras_hub.src.models.gemma3 import gemma3_attention, gemma3_decoder_block
from keras_hub.src.models.gemma4 import gemma4_attention, gemma4_decoder_block


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
#   The splash path (kerasgemma/splash.py) recomputes `_compute_attention`
#       from the layer's attributes: its query scale, sliding window (Gemma 4:
#       the block's `_compute_attention_mask` windows the non-global layers)
#       and soft-cap; attention `call` must pass the block's mask only to
#       `_compute_attention` and its "no attended tokens" wipe.
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
    (gemma4_attention.Gemma4TextAttention, "call"): "0d2c9fc607f25507",
    (gemma4_attention.Gemma4TextAttention, "_compute_attention"): "7ab4ab068b6ee26c",
    (gemma4_attention.Gemma4TextAttention, "_mask_sliding_window"): "3a96f8217e82bebd",
    (gemma4_decoder_block.Gemma4TextDecoderBlock, "call"): "572ec6ec25443f2b",
    (gemma4_decoder_block.Gemma4TextDecoderBlock, "_compute_attention_mask"): "c1d93e14e17dcde9",
}

RECHECK = (
    "keras-hub changed {name}, which kerasgemma/attention.py patches (packed_attention / "
    "causal_attention_op). Re-read the new source against the comment at the top of "
    "kerasgemma/attention.py: the decoder block must still take its mask from "
    "self._compute_attention_mask, the attention layer must still rotate through "
    "self.rope_layer(x, start_index=...) and call keras.ops.dot_product_attention by attribute, "
    "and _compute_attention must still scale, window and soft-cap as kerasgemma/attention.py's "
    "_splash_compute_attention assumes (the TPU path). "
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


# What the patch does on the fused path (is_causal=True, our mask, one call per
# layer, results unchanged) is checked by test_data_packing.py::
# test_fused_attention_path_with_causal_hint_matches_examples_alone.
