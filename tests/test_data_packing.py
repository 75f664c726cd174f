"""Packed and bucketed batches give every example the losses it has on its own."""

import numpy as np
import pytest
from helpers import jitted_backbone, spy_fused_attention

from kerasgemma.data import Batches, pack_rows, tokenize_examples
from kerasgemma.forward import token_losses
from kerasgemma.tiny import build_tiny_causal_lm

QUESTIONS = ["什么是熊猫？", "天空为什么是蓝色的？", "1+1等于几？", "北京在哪里？", "水的沸点是多少？", "你好"]
ANSWERS = ["熊猫是一种熊，生活在中国。", "因为瑞利散射。", "2", "在中国北方。", "一百摄氏度左右，取决于气压。", "你好！"]
EXAMPLES = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "source": f"t:{i}"}
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS))
]


@pytest.fixture(scope="module")
def tiny_lm():
    models = {}

    def build(architecture):
        if architecture not in models:
            models[architecture] = build_tiny_causal_lm(architecture, texts=QUESTIONS + ANSWERS)
        return models[architecture]

    return build


def example_positions(batches, epoch):
    """For each batch of the epoch: {example index: (row, start, end)}."""
    positions = []
    for _, rows in batches.epoch_plan(epoch):
        where = {}
        for row, indices in enumerate(rows):
            offset = 0
            for index in indices:
                length = len(batches.examples[index].token_ids) - 1
                where[index] = (row, offset, offset + length)
                offset += length
        positions.append(where)
    return positions


# The fast set keeps Gemma 2 (soft-capped attention) and Gemma 3 packed; the
# other combinations run in the full suite (`make test`).
@pytest.mark.parametrize("architecture", [pytest.param("gemma", marks=pytest.mark.slow), "gemma2", "gemma3"])
@pytest.mark.parametrize("mode", ["pack", pytest.param("bucket", marks=pytest.mark.slow)])
def test_losses_in_batch_equal_losses_alone(tiny_lm, architecture, mode):
    lm = tiny_lm(architecture)
    tokenized, _ = tokenize_examples(EXAMPLES, lm.preprocessor.tokenizer, max_tokens=97)
    batches = Batches(tokenized, batch_size=2, sequence_length=96, mode=mode, seed=0)
    if mode == "pack":
        assert max(len(rows) for _, rows in batches.epoch_plan(0) for rows in rows) > 1
    # Each example alone in its row, at offset 0, followed by padding only
    # (which a causal model never looks at): its reference losses.
    padded = Batches(tokenized, batch_size=len(tokenized), sequence_length=96, mode="pad")
    (length, rows), = padded.epoch_plan(0)
    losses = np.asarray(token_losses(lm, next(padded.epoch(0))))
    alone = {index: losses[row, : len(tokenized[index].token_ids) - 1] for row, (index,) in enumerate(rows)}
    checked = 0
    for batch, where in zip(batches.epoch(0), example_positions(batches, 0)):
        losses = np.asarray(token_losses(lm, batch))
        for index, (row, start, end) in where.items():
            example = tokenized[index]
            np.testing.assert_array_equal(batch["target_ids"][row, start:end], example.token_ids[1:])
            np.testing.assert_array_equal(batch["loss_weights"][row, start:end], example.loss_mask[1:])
            np.testing.assert_allclose(losses[row, start:end], alone[index], rtol=1e-5, atol=1e-5)
            checked += 1
        # Nothing outside the examples carries loss.
        assert batch["loss_weights"][batch["segment_ids"] == 0].sum() == 0
    assert checked == len(tokenized)


def test_packing_without_segment_mask_would_differ(tiny_lm):
    """Guard against a vacuous test: attention across examples does change the losses."""
    lm = tiny_lm("gemma")
    tokenized, _ = tokenize_examples(EXAMPLES, lm.preprocessor.tokenizer, max_tokens=97)
    batch = next(Batches(tokenized, batch_size=2, sequence_length=96).epoch(0))
    merged = dict(batch, segment_ids=(batch["segment_ids"] > 0).astype(np.int32))
    packed, leaked = np.asarray(token_losses(lm, batch)), np.asarray(token_losses(lm, merged))
    later = (batch["segment_ids"] > 1)
    assert np.abs(packed - leaked)[later].max() > 1e-3


def test_epochs_shuffle_deterministically_and_resume():
    lengths = np.random.default_rng(0).integers(8, 200, size=300)
    from kerasgemma.data import TokenizedExample

    examples = [TokenizedExample(np.arange(n, dtype=np.int32) + 4, np.ones(n, np.int8), f"x:{i}") for i, n in enumerate(lengths)]
    for mode in ["pack", "bucket", "pad"]:
        batches = Batches(examples, batch_size=4, sequence_length=256, mode=mode, seed=5)
        epoch0 = list(batches.epoch(0))
        assert len(epoch0) == len(batches)
        resumed = list(batches.epoch(0, start_batch=3))
        assert all(np.array_equal(a["token_ids"], b["token_ids"]) for a, b in zip(epoch0[3:], resumed))
        assert len(resumed) == len(batches) - 3
        again = Batches(examples, batch_size=4, sequence_length=256, mode=mode, seed=5)
        assert batches.epoch_plan(1) == again.epoch_plan(1) != batches.epoch_plan(0)
        # Every example appears exactly once per epoch.
        seen = sorted(i for _, rows in batches.epoch_plan(1) for row in rows for i in row)
        assert seen == list(range(len(examples)))
        real = sum(int((b["segment_ids"] > 0).sum()) for b in epoch0)
        slots = sum(b["segment_ids"].size for b in epoch0)
        assert real == int((lengths - 1).sum())
        assert batches.non_padding_fraction == pytest.approx(real / slots)
    shapes = Batches(examples, batch_size=4, sequence_length=256, mode="bucket").shapes
    assert shapes == [(4, 64), (4, 128), (4, 256)]


def test_packing_beats_padding_on_skewed_lengths():
    lengths = np.clip(np.random.default_rng(1).lognormal(np.log(180), 0.8, size=2000), 16, 1024).astype(int)
    rows = pack_rows(lengths, 1024, seed=0)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(lengths[row].sum() <= 1024 for row in rows)
    packed = lengths.sum() / (len(rows) * 1024)
    padded = lengths.sum() / (len(lengths) * 1024)
    assert packed > 0.95 and padded < 0.3


@pytest.mark.parametrize(
    "architecture",
    [pytest.param("gemma", marks=pytest.mark.slow), pytest.param("gemma2", marks=pytest.mark.slow), "gemma3"],
)
def test_packed_example_in_bfloat16_is_computed_as_if_alone(architecture):
    """Positions restart per example: in bfloat16, RoPE at offset 60 is not RoPE at offset 0
    (absolute positions gave differences of about 0.05 on outputs of size 3)."""
    from kerasgemma.attention import packed_attention
    from kerasgemma.tiny import build_tiny_causal_lm

    lm = build_tiny_causal_lm(architecture, dtype="bfloat16")
    rng = np.random.default_rng(0)
    first, second = rng.integers(10, 200, 60), rng.integers(10, 200, 30)
    second[0] = 2
    token_ids = np.concatenate([first, second])[None]
    segment_ids = np.array([[1] * 60 + [2] * 30])
    with packed_attention(lm.backbone, segment_ids):
        packed = jitted_backbone(lm.backbone)({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)})
    alone = jitted_backbone(lm.backbone)({"token_ids": second[None], "padding_mask": np.ones((1, 30), bool)})
    np.testing.assert_allclose(np.asarray(packed, np.float32)[0, 60:], np.asarray(alone, np.float32)[0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("architecture", [pytest.param("gemma", marks=pytest.mark.slow), "gemma3"])
def test_fused_attention_path_with_causal_hint_matches_examples_alone(architecture, monkeypatch):
    """The fused-op path (cuDNN on a GPU) gets `is_causal=True` next to the segment mask:
    forced on here (XLA runs it on CPU), packed examples still equal the examples alone."""
    import keras

    from kerasgemma.attention import packed_attention
    from kerasgemma.tiny import build_tiny_causal_lm

    lm = build_tiny_causal_lm(architecture)
    calls, spy = spy_fused_attention(lm, monkeypatch)
    rng = np.random.default_rng(0)
    first, second = rng.integers(10, 200, 20), rng.integers(10, 200, 12)
    token_ids = np.concatenate([first, second])[None]
    with packed_attention(lm.backbone, np.array([[1] * 20 + [2] * 12])):
        packed = lm.backbone({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)})
    # One fused call per layer (keras-hub internals, pinned in test_attention_patch.py), each with
    # is_causal and packed_attention's mask, at most narrowed by a sliding window.
    assert len(calls) == lm.backbone.num_layers and all(call.get("is_causal") for call in calls)
    from kerasgemma.attention import segment_causal_mask

    segment_mask = np.asarray(segment_causal_mask(np.array([[1] * 20 + [2] * 12])))[0]
    for call in calls:
        mask = np.asarray(call["mask"])[0, 0]
        assert mask.shape == (32, 32) and mask.diagonal().all() and not (mask & ~segment_mask).any()
    if architecture == "gemma":  # no sliding window: exactly the segment mask
        assert all((np.asarray(call["mask"])[0, 0] == segment_mask).all() for call in calls)
    assert keras.ops.dot_product_attention is spy  # restored on exit
    alone = lm.backbone({"token_ids": second[None], "padding_mask": np.ones((1, 12), bool)})
    np.testing.assert_allclose(np.asarray(packed)[0, 20:], np.asarray(alone)[0], atol=1e-5, rtol=0)
