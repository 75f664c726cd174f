"""Packed attention: the wiring of the opt-in cuDNN "causal" path.

cuDNN itself does not run on CPU; bench/levers.py checks the GPU paths'
losses and gradients against the dense mask on the device. Here the "causal"
path runs through JAX's XLA kernel instead, which checks everything around
the kernel: scale, sliding window, mask and which layers are switched.
"""

import numpy as np
import pytest

from kerasgemma import attention
from kerasgemma.tiny import build_tiny_causal_lm
from kerasgemma.train.step import summed_loss


def random_packed_rows(rng, rows, length):
    segment_ids = np.zeros((rows, length), np.int32)
    for row in range(rows):
        position, segment = 0, 1
        fill = rng.integers(length // 2, length + 1)
        while position < fill:
            size = int(rng.integers(1, 12))
            segment_ids[row, position : min(fill, position + size)] = segment
            position, segment = position + size, segment + 1
    return segment_ids


@pytest.mark.parametrize("arch", ["gemma", "gemma3"])
def test_causal_path_matches_dense_mask(arch, monkeypatch):
    lm = build_tiny_causal_lm(arch, dtype="float32")
    rng = np.random.default_rng(1)
    segment_ids = random_packed_rows(rng, 2, 24)  # longer than the tiny sliding window (8)
    batch = {
        "token_ids": rng.integers(3, 200, segment_ids.shape).astype(np.int32),
        "target_ids": rng.integers(3, 200, segment_ids.shape).astype(np.int32),
        "segment_ids": segment_ids,
        "loss_weights": (segment_ids != 0).astype(np.float32),
    }
    trainable = [v.value for v in lm.trainable_variables]
    frozen = [v.value for v in lm.non_trainable_variables]
    dense, _ = summed_loss(lm, trainable, frozen, batch, attention="dense")
    switched = []
    monkeypatch.setattr(attention, "CAUSAL_KERNEL", "xla")
    for block in lm.backbone.transformer_layers:
        monkeypatch.setattr(type(block.attention), "_use_fused_attention_op", lambda self: switched.append(self) or True)
    causal, _ = summed_loss(lm, trainable, frozen, batch, attention="causal")
    assert len(switched) == len(lm.backbone.transformer_layers)
    np.testing.assert_allclose(float(causal), float(dense), rtol=1e-5)


def test_unknown_implementation_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown attention implementation 'flash'"):
        attention.resolve_implementation("flash")


def test_causal_path_needs_a_gpu():
    lm = build_tiny_causal_lm("gemma")
    with pytest.raises(ValueError, match="needs a GPU"):
        with attention.packed_attention(lm.backbone, np.ones((1, 4), np.int32), "causal"):
            pass
