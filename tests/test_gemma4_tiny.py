"""Tiny Gemma 4 models: each feature the export must handle is really there."""

import jax
import numpy as np
import pytest

from kerasgemma.model import load_causal_lm


def _blocks(lm):
    backbone = lm.backbone
    return [backbone.get_layer(f"decoder_block_{i}") for i in range(backbone.num_layers)]


@pytest.fixture(scope="module")
def gemma4():
    return load_causal_lm("tiny:gemma4", dtype="float32")


@pytest.fixture(scope="module")
def gemma4_moe():
    return load_causal_lm("tiny:gemma4-moe", dtype="float32")


def _forward(lm, text="The quick brown fox jumps over the lazy dog."):
    tokenizer = lm.preprocessor.tokenizer
    ids = np.array([[tokenizer.start_token_id] + [int(t) for t in tokenizer(text)]], "int32")
    positions = np.arange(ids.shape[1], dtype="int32")[None]
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids), "position_ids": positions}
    # Compiled as one program: op by op, this tiny forward takes ~10 s on CPU.
    logits = jax.jit(lm)(inputs)
    return ids, np.asarray(logits)


def test_tokenizer_has_gemma4_markers(gemma4):
    tokenizer = gemma4.preprocessor.tokenizer
    assert (tokenizer.pad_token_id, tokenizer.end_token_id, tokenizer.start_token_id) == (0, 1, 2)
    ids = [int(t) for t in tokenizer("<|turn>user\n你好<turn|>\n")]
    assert ids[0] == tokenizer.token_to_id("<|turn>")
    assert tokenizer.token_to_id("<turn|>") in ids
    assert tokenizer.id_to_token(tokenizer.token_to_id("<|think|>")) == "<|think|>"


def test_gemma4_features_and_forward(gemma4):
    blocks = _blocks(gemma4)
    assert gemma4.backbone.layer_types == ["sliding_attention", "full_attention"] * 2
    assert gemma4.backbone.get_layer("per_layer_token_embedding") is not None
    # Layers 2 and 3 reuse the K/V of layers 0 and 1 and have a 2x MLP.
    assert [b.attention.key_dense is None for b in blocks] == [False, False, True, True]
    assert [b.kv_shared_layer_index for b in blocks[2:]] == [0, 1]
    assert [b.gating_ffw.kernel.shape[-1] for b in blocks] == [64, 64, 128, 128]
    # Global layers: wider heads, RoPE on a quarter of them.
    assert [b.attention.head_dim for b in blocks] == [8, 16, 8, 16]
    assert blocks[1].attention.rotary_dim == 4
    ids, logits = _forward(gemma4)
    assert logits.shape == (1, ids.shape[1], gemma4.backbone.vocabulary_size)
    assert np.isfinite(logits).all()


def test_gemma4_moe_features_and_forward(gemma4_moe):
    blocks = _blocks(gemma4_moe)
    # K=V on global layers: no value projection, one KV head.
    assert [b.attention.value_dense is None for b in blocks] == [False, True, False, True]
    assert blocks[1].attention.key_dense.kernel.shape[0] == 1
    assert blocks[0].attention.key_dense.kernel.shape[0] == 2
    assert all(b.enable_moe_block for b in blocks)
    assert blocks[0].moe_expert_bank.gate_proj.shape == (4, 32, 16)
    _, logits = _forward(gemma4_moe)
    assert np.isfinite(logits).all()
