"""The Pallas Triton flash attention over packed rows (`kerasgemma.flash_attention`).

No GPU is at hand: the kernels run in Pallas' interpret mode on the CPU (the
same kernel code, run as JAX ops), so these tests check what they compute
and which blocks they visit, not their speed or Triton's compilation.

Tolerance: everything is float32; the kernels form the softmax online, one
block at a time, the reference takes one softmax over the whole row. Same
arithmetic in another order: measured at most 7e-7 on outputs (magnitude
~1) and 3.4e-6 on gradients (magnitude up to ~9). A wrong mask, window or soft-cap moves them by
1e-2 or more (the soft-cap test shows one).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kerasgemma.attention import segment_causal_mask
from kerasgemma.flash_attention import BlockSizes
from kerasgemma.flash_attention import key_block_bounds
from kerasgemma.flash_attention import query_block_bounds
from kerasgemma.flash_attention import segment_flash_attention
from kerasgemma.splash import splash_segment_ids

ATOL = 1e-5
# Several blocks a side, query and key blocks of different sizes in each kernel.
BLOCKS = BlockSizes(block_q=32, block_k=16, block_q_dq=16, block_k_dq=32, block_q_dkv=32, block_k_dkv=16)


def _row(*lengths, padding=0):
    """One row of segment ids: examples of `lengths` tokens, then `padding` zeros."""
    return [i + 1 for i, n in enumerate(lengths) for _ in range(n)] + [0] * padding


def _reference(query, key, value, segment_ids, scale, soft_cap, window):
    """Float32 dense attention: `segment_causal_mask`, narrowed to the window."""
    groups = query.shape[2] // key.shape[2]
    key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", query * scale, key)
    if soft_cap is not None:
        logits = jnp.tanh(logits / soft_cap) * soft_cap
    mask = segment_causal_mask(segment_ids)
    if window is not None:
        index = jnp.arange(mask.shape[-1])
        mask = mask & (index[:, None] - index[None, :] < window)
    logits = jnp.where(mask[:, None], logits, -jnp.inf)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), value)


def _inputs(segment_ids, query_heads, kv_heads, head_dim, seed=0):
    rng = np.random.default_rng(seed)
    batch, length = segment_ids.shape
    return [jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
            for heads in (query_heads, kv_heads, kv_heads, query_heads)]


def _out_and_gradients(attention, query, key, value, dout):
    def run(query, key, value):
        out, pullback = jax.vjp(attention, query, key, value)
        return out, pullback(dout)

    return jax.jit(run)(query, key, value)


# segment ids, query heads, kv heads, head dim, scale, soft-cap, window
CASES = {
    "examples_and_padding_gqa": ([_row(40, 50, 30, padding=8), _row(3, 100, 25)], 4, 2, 16, 0.25, None, None),
    "mqa_length_not_a_multiple_of_the_block": ([_row(33, 47, padding=20), _row(60, 40)], 2, 1, 16, 0.25, None, None),
    "window_smaller_than_an_example": ([_row(40, 50, 30, padding=8), _row(128)], 4, 2, 16, 0.25, None, 20),
    "one_example_then_many_tiny_ones": ([_row(128), _row(*([1, 2, 3] * 21), 2)], 2, 1, 8, 0.25, None, None),
    "soft_cap_and_window": ([_row(40, 50, 30, padding=8), _row(3, 100, 25)], 4, 2, 32, 1.0, 2.0, 40),
}


@pytest.mark.parametrize("case", CASES)
def test_out_and_gradients_equal_the_dense_computation(case):
    """Outputs on real tokens and the gradients of query, key and value (a random cotangent,
    padding's zeroed: its outputs are dropped), against the float32 dense reference."""
    segment_ids, query_heads, kv_heads, head_dim, scale, soft_cap, window = CASES[case]
    segment_ids = np.array(segment_ids)
    query, key, value, dout = _inputs(segment_ids, query_heads, kv_heads, head_dim)
    real = segment_ids != 0
    dout = dout * real[:, :, None, None]
    got = _out_and_gradients(lambda q, k, v: segment_flash_attention(
        q, k, v, segment_ids, scale, soft_cap, window, block_sizes=BLOCKS), query, key, value, dout)
    want = _out_and_gradients(lambda q, k, v: _reference(q, k, v, segment_ids, scale, soft_cap, window),
                              query, key, value, dout)
    assert got[0].shape == query.shape and got[0].dtype == query.dtype
    assert np.isfinite(np.asarray(got[0])).all()
    np.testing.assert_allclose(np.asarray(got[0])[real], np.asarray(want[0])[real], atol=ATOL, rtol=0)
    for name, got_gradient, want_gradient in zip(("query", "key", "value"), got[1], want[1]):
        np.testing.assert_allclose(got_gradient, want_gradient, atol=ATOL, rtol=0, err_msg=name)


def test_soft_cap_is_applied_where_logits_reach_it():
    """Scale 1 on head dim 32: logits of magnitude ~6-20 against a cap of 2. The kernel equals the
    capped reference; the uncapped one is more than 1e-2 away (outputs and query gradients)."""
    segment_ids, query_heads, kv_heads, head_dim, scale, soft_cap, _ = CASES["soft_cap_and_window"]
    segment_ids = np.array(segment_ids)
    query, key, value, dout = _inputs(segment_ids, query_heads, kv_heads, head_dim, seed=1)
    assert float(jnp.abs(jnp.einsum("bqhd,bkhd->bhqk", query[:, :, :2], key)).max()) > 10 * soft_cap
    got = _out_and_gradients(lambda q, k, v: segment_flash_attention(
        q, k, v, segment_ids, scale, soft_cap, block_sizes=BLOCKS), query, key, value, dout)
    capped, uncapped = (_out_and_gradients(lambda q, k, v: _reference(q, k, v, segment_ids, scale, cap, None),
                                           query, key, value, dout) for cap in (soft_cap, None))
    real = segment_ids != 0
    np.testing.assert_allclose(np.asarray(got[0])[real], np.asarray(capped[0])[real], atol=ATOL, rtol=0)
    np.testing.assert_allclose(got[1][0], capped[1][0], atol=ATOL, rtol=0)
    assert np.abs(np.asarray(got[0] - uncapped[0])[real]).max() > 1e-2
    assert np.abs(np.asarray(got[1][0] - uncapped[1][0])).max() > 1e-2


# 32 tokens: examples of 10, 1, 14 and 3 tokens, then 4 of padding; blocks of 4.
LAYOUT = [_row(10, 1, 14, 3, padding=4)]


def test_key_block_bounds_start_at_the_first_querys_example_or_window():
    """Query block 3 (tokens 12-15) starts in example 3 (tokens 11-24): key blocks 2 and 3 only;
    the padding block 7 sees itself alone. A window of 5 starts each block 4 tokens back."""
    ids = splash_segment_ids(LAYOUT, 32)
    first, stop = key_block_bounds(ids, 4, 4)
    assert np.asarray(first).tolist() == [[0, 0, 0, 2, 2, 2, 2, 7]]
    assert np.asarray(stop).tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    first, stop = key_block_bounds(ids, 4, 4, window=5)
    assert np.asarray(first).tolist() == [[0, 0, 1, 2, 3, 4, 5, 7]]
    first, stop = key_block_bounds(ids, 8, 4)  # query blocks of 8 tokens over key blocks of 4
    assert np.asarray(first).tolist() == [[0, 0, 2, 2]] and np.asarray(stop).tolist() == [[2, 4, 6, 8]]


def test_query_block_bounds_stop_after_the_last_keys_example_or_window():
    """Key block 0 (tokens 0-3, example 1) is seen by queries up to token 9: query blocks 0-2;
    key block 2 ends in example 3, seen up to token 24 (block 6). A window of 5 ends 4 tokens on."""
    ids = splash_segment_ids(LAYOUT, 32)
    first, stop = query_block_bounds(ids, 4, 4)
    assert np.asarray(first).tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert np.asarray(stop).tolist() == [[3, 3, 7, 7, 7, 7, 7, 8]]
    _, stop = query_block_bounds(ids, 4, 4, window=5)
    assert np.asarray(stop).tolist() == [[2, 3, 4, 5, 6, 7, 7, 8]]


def test_skipped_key_blocks_are_never_read():
    """NaN values in the first example (tokens 0-15: key block 0) reach the query block that visits
    key block 0 (a visited block's masked values still enter its product as 0 * NaN) and no other:
    the later query blocks start in later examples, as `key_block_bounds` says. Without the
    skipping every query block would visit key block 0."""
    segment_ids = np.array([_row(16, 40, 40, 32)])
    query, key, value, _ = _inputs(segment_ids, 2, 1, 16)
    value = value.at[:, :16].set(jnp.nan)
    out = np.asarray(segment_flash_attention(query, key, value, segment_ids, 0.25, block_sizes=BLOCKS))
    first, _ = key_block_bounds(splash_segment_ids(segment_ids, 128), BLOCKS.block_q, BLOCKS.block_k)
    visits_first_example = np.repeat(np.asarray(first)[0] == 0, BLOCKS.block_q)
    assert visits_first_example.tolist() == [True] * 32 + [False] * 96
    assert np.isnan(out[0, visits_first_example]).all() and np.isfinite(out[0, ~visits_first_example]).all()


def test_unsupported_shapes_and_blocks_are_refused():
    query = jnp.zeros((1, 16, 2, 512))
    with pytest.raises(ValueError, match="head dims up to 256"):
        segment_flash_attention(query, query, query, np.ones((1, 16), int), 1.0)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        segment_flash_attention(jnp.zeros((1, 16, 3, 16)), jnp.zeros((1, 16, 2, 16)), jnp.zeros((1, 16, 2, 16)),
                                np.ones((1, 16), int), 1.0)
    with pytest.raises(ValueError, match="block_k must be a power of two"):
        BlockSizes(block_k=48)


class _FakeGpu:
    platform = "gpu"

    def __init__(self, compute_capability):
        self.compute_capability = compute_capability


@pytest.mark.parametrize("capability, dtype, head_dim, wanted", [
    ("9.0", "bfloat16", 256, True),    # H100 / H200: measured
    ("10.0", "float16", 128, True),    # Blackwell, float16
    ("8.0", "bfloat16", 256, False),   # A100: the default tiles do not fit its shared memory
    ("7.5", "float16", 256, False),    # T4
    ("9.0", "float32", 256, False),    # float32 tiles: twice the shared memory
    ("9.0", "bfloat16", 512, False),   # Gemma 4's global layers
    ("gfx942", "bfloat16", 256, False),  # an AMD GPU
])
def test_auto_picks_flash_on_hopper_gpus_only_where_it_fits(monkeypatch, capability, dtype, head_dim, wanted):
    """`packed_attention(kernel="auto")` on a faked GPU: the backbone's layers and dtype, the card's generation."""
    import kerasgemma.attention
    from kerasgemma.flash_attention import flash_wanted
    from kerasgemma.tiny import build_tiny_causal_lm

    backbone = build_tiny_causal_lm("gemma", dtype=dtype).backbone
    for block in backbone.transformer_layers:
        monkeypatch.setattr(block.attention, "head_dim", head_dim)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *args: [_FakeGpu(capability)])
    assert flash_wanted(backbone) is wanted
    assert kerasgemma.attention.auto_kernel(backbone) == ("flash" if wanted else "dense")
