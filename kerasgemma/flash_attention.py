"""Flash attention over packed rows on a GPU (Pallas Triton), skipping the blocks across examples.

`segment_flash_attention` computes what `kerasgemma.splash.splash_attention`
computes (causal attention within examples, as
`kerasgemma.attention.segment_causal_mask` defines it, with Gemma 2's logit
soft-cap and sliding windows), with the call contract of `splash_attention`,
as a Pallas Triton kernel for NVIDIA GPUs. Scores are computed block by
block, never materialised, and the key blocks a query block cannot see are
not visited at all: above the diagonal, before the start of the example of
the block's first query, before the window. On HC3-like rows of 1024 tokens
(4 to 6 examples, long-tailed lengths) the forward visits 44% of the 64 x 64
blocks on and under the diagonal.

Adapted from JAX's Pallas Triton flash attention,
`jax/experimental/pallas/ops/gpu/attention.py` (Copyright 2023 The JAX
Authors, Apache License 2.0; the same code in jax 0.10.2 and 0.11). Kept: the
grid (query blocks, rows, heads), the online softmax in base 2 with the
running maximum and sum, the residual log-sum-exp, the backward pass from the
FlashAttention-2 paper (recomputed probabilities, `delta = rowsum(out *
dout)`), the in-block masking by segment ids and causality. Changed:
- Block skipping. The key-block loop of the forward and dq kernels runs
  from `first` to `stop`, and the query-block loop of the dk/dv kernel
  likewise, both read per (row, block) from small int32 arrays computed by
  plain JAX before the kernels (`key_block_bounds`, `query_block_bounds`).
  JAX's kernel loops from block 0 (forward, dq) or to the last block (dk/dv).
- Padding: tokens of segment 0 and the positions added to reach a multiple
  of the largest block get an id of their own each
  (`kerasgemma.splash.splash_segment_ids`), so each attends to itself alone,
  as in `segment_causal_mask`.
- Gemma 2's soft-cap, `tanh(logits / cap) * cap`, in the three kernels; its
  derivative `1 - tanh(logits / cap)**2` multiplies the score gradient.
- Sliding windows: position i sees j when `i - j < window`, in the element
  mask and in the block bounds.
- Grouped key/value heads (MQA, GQA) without repeating keys and values:
  the forward and dq kernels read key/value head `h // groups` for query
  head h; the dk/dv kernel runs per query head and the group's gradients
  are summed by XLA.
- The backward pass is two kernels (dq over key blocks; dk and dv over query
  blocks) instead of one fused kernel, and `delta` is computed by XLA
  instead of a preprocessing kernel.
- The query is scaled in its own dtype before the kernel (as keras-hub does),
  not inside it; head dims below 16 or not a power of two are zero-padded
  before the kernel (Triton's block shapes are powers of two, its matrix
  products at least 16 wide) instead of masked in it.

Examples must be contiguous in a row (the data pipeline packs them so): the
bounds take an example's first and last token from where its id starts and
stops. Head dims above `MAX_HEAD_DIM` (256; Gemma 4's 512-wide global
layers) raise a ValueError: 512-wide tiles of 64 tokens would not fit a
thread block's shared memory and registers. On a backend other than a GPU
the kernels run in Pallas' interpret mode (plain JAX ops, slow): that is how
the tests check them on a CPU. Compiled by Triton on an H200 (jax 0.11.2),
float32 outputs were within 1e-6 and gradients within 1.5e-5 of XLA's dense
float32 computation (GQA, soft-cap, window, head dims 8, 64, 80, 128).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kerasgemma.kernel_sharding import over_devices
from kerasgemma.splash import splash_segment_ids

MAX_HEAD_DIM = 256
# `flash_wanted` picks the kernel on NVIDIA GPUs from Hopper on: it was
# measured on an H200 (9.0), and its default forward tiles (64 x 64 at head
# dim 256, 3 stages) ask about 200 KB of shared memory per thread block, more
# than an A100 (164 KB) or a T4 (64 KB) has.
MIN_COMPUTE_CAPABILITY = 9.0
# The name of the forward kernel's outputs (`jax.ad_checkpoint.checkpoint_name`):
# `kerasgemma.remat`'s "dots" policy keeps them, so the backward pass does not
# run the forward kernel again.
FORWARD_OUTPUTS = "segment_flash_forward_outputs"
# Triton's matrix products need every dimension at least 16 wide.
MIN_BLOCK = 16
# The masked logit: finite, so that a row whose visited keys are all masked
# so far gives exp2(0) = 1 (wiped by the next visible key's correction, and
# every query sees itself) instead of NaN. JAX's kernel's value.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
LOG2_E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (tokens; powers of two, at least 16) and Triton launch settings of the three kernels.

    The defaults were the fastest of the variants tried on an H200 (jax
    0.11.2, bfloat16, head dim 256, 8 packed HC3-like rows of 1024 tokens):
    forward + backward 0.45 ms for Gemma 2B's attention (cuDNN with the
    dense mask: 0.87 ms) and 0.46 ms for Gemma 2 2B's, soft-capped
    (keras-hub's einsums: 1.42 ms); 0.65 ms with 64 x 64 tiles everywhere
    (the dk/dv kernel then holds two 64 x 256 float32 accumulators: 256
    values per thread at 4 warps).
    128 x 128 forward tiles at head dim 256 need `num_stages=1` (two stages
    ask 320 KiB of shared memory; an H100 / H200 thread block has 227 KiB)
    and were slower.

    Example:
    >>> BlockSizes(block_q=128, block_k=128).largest
    128
    """

    block_q: int = 64
    block_k: int = 64
    block_q_dq: int = 64
    block_k_dq: int = 64
    block_q_dkv: int = 64
    block_k_dkv: int = 32
    num_warps: int = 4
    num_stages: int = 3
    backward_num_warps: int = 4
    backward_num_stages: int = 2

    def __post_init__(self):
        for name, size in self.blocks.items():
            if size < MIN_BLOCK or size & (size - 1):
                raise ValueError(f"{name} must be a power of two, at least {MIN_BLOCK}; got {size}.")

    @property
    def blocks(self):
        """`{field name: tokens}` of the six tile sizes."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name.startswith("block_")}

    @property
    def largest(self):
        """The largest tile: the sequence is padded to a multiple of it (so of every tile)."""
        return max(self.blocks.values())


def segment_flash_attention(query, key, value, segment_ids, scale, soft_cap=None, window=None, block_sizes=None,
                            interpret=None):
    """Causal attention within packed examples through a Pallas Triton kernel, in keras-hub's layout.

    Args:
        query: `(batch, seq, query_heads, head_dim)`.
        key: `(batch, seq, kv_heads, head_dim)`; `value` alike. `query_heads`
            is a multiple of `kv_heads`: query head h uses key/value head
            `h // (query_heads // kv_heads)`.
        segment_ids: `(batch, seq)` ints: 1, 2, 3... per example (each
            example's tokens contiguous), 0 for padding.
        scale: float. Multiplies the query (in its dtype) before the scores.
        soft_cap: float or None. Attention-logit soft-cap (Gemma 2).
        window: int or None. Sliding-window size (itself included): position
            i sees j when `i - j < window`.
        block_sizes: `BlockSizes` or None (the defaults).
        interpret: bool or None. Run the kernels in Pallas' interpret mode;
            None: unless the default JAX backend is a GPU.

    Returns:
        `(batch, seq, query_heads, head_dim)` in the query's dtype.

    Raises:
        ValueError: a head dim above `MAX_HEAD_DIM`, or query heads not a
            multiple of key/value heads.

    Example (interpret mode on a CPU; equals the dense computation):
    >>> import keras
    >>> import numpy as np
    >>> from kerasgemma.attention import segment_causal_mask
    >>> q = np.random.default_rng(0).normal(size=(1, 6, 2, 4)).astype("float32")
    >>> segment_ids = np.array([[1, 1, 1, 2, 2, 0]])
    >>> mask = np.asarray(segment_causal_mask(segment_ids))[:, None]
    >>> dense = keras.ops.dot_product_attention(q, q, q, mask=mask, scale=0.5)
    >>> out = segment_flash_attention(q, q, q, segment_ids, 0.5)
    >>> bool(np.allclose(out, dense, atol=1e-5))
    True
    """
    blocks = block_sizes or BlockSizes()
    interpret = jax.default_backend() != "gpu" if interpret is None else interpret
    _, length, query_heads, head_dim = query.shape
    kv_heads = key.shape[2]
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"segment_flash_attention supports head dims up to {MAX_HEAD_DIM}; got {head_dim}.")
    if query_heads % kv_heads:
        raise ValueError(f"Query heads ({query_heads}) must be a multiple of key/value heads ({kv_heads}).")
    padded_length = -(-length // blocks.largest) * blocks.largest
    padded_dim = max(MIN_BLOCK, pl.next_power_of_2(head_dim))

    def padded(x):
        return jnp.pad(x, ((0, 0), (0, padded_length - length), (0, 0), (0, padded_dim - head_dim)))

    query = jnp.asarray(query)
    query = query * jnp.asarray(scale, query.dtype)
    ids = splash_segment_ids(segment_ids, padded_length)

    def rows(query, key, value, ids):
        return _attention(query, key, value, ids, soft_cap, window, blocks, interpret)

    out = over_devices(rows, query_heads, kv_heads, head_axis=2)(
        padded(query), padded(jnp.asarray(key)), padded(jnp.asarray(value)), ids)
    return out[:, :length, :, :head_dim]


def flash_wanted(backbone):
    """Whether `packed_attention(kernel="auto")` should run this kernel for `backbone`.

    Yes where it was measured faster than cuDNN (bench/NOTES.md) and fits:
    the default JAX backend is an NVIDIA GPU of compute capability
    `MIN_COMPUTE_CAPABILITY` or later, every attention layer's head dim is at
    most `MAX_HEAD_DIM` (not Gemma 4's 512-wide global layers), and the
    model computes in a 16-bit dtype (float32 tiles ask twice the shared
    memory).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> flash_wanted(build_tiny_causal_lm("gemma").backbone)  # the tests run on a CPU
    False
    """
    if jax.default_backend() != "gpu":
        return False
    capability = str(getattr(jax.devices()[0], "compute_capability", "0"))
    if not capability.replace(".", "", 1).isdigit():
        return False  # an AMD GPU names its architecture ("gfx90a"); the kernel is tuned for NVIDIA's
    head_dims = [block.attention.head_dim for block in backbone.transformer_layers]
    return (float(capability) >= MIN_COMPUTE_CAPABILITY and max(head_dims) <= MAX_HEAD_DIM
            and jnp.dtype(backbone.compute_dtype).itemsize == 2)


def first_key_and_last_query(segment_ids, window=None):
    """Per token, `(batch, seq)` int32 each: the first key it may see, and the last query that may see it.

    A run of equal ids is one example: without a window, the first key is
    the example's first token and the last query its last token
    (`kerasgemma.attention.segment_positions` counts from the former). The
    kernels pass `splash_segment_ids`, where each padding token is an example
    of its own. Both never decrease along a row.

    Example:
    >>> import numpy as np
    >>> first, last = first_key_and_last_query(np.array([[1, 1, 1, 2, 2, -6]]))
    >>> np.asarray(first).tolist(), np.asarray(last).tolist()
    ([[0, 0, 0, 3, 3, 5]], [[2, 2, 2, 4, 4, 5]])
    >>> first, last = first_key_and_last_query(np.array([[1, 1, 1, 1]]), window=2)
    >>> np.asarray(first).tolist(), np.asarray(last).tolist()
    ([[0, 0, 1, 2]], [[1, 2, 3, 3]])
    """
    segment_ids = jnp.asarray(segment_ids)
    length = segment_ids.shape[-1]
    index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), segment_ids.shape)
    changes = segment_ids[:, 1:] != segment_ids[:, :-1]
    edge = jnp.ones_like(changes[:, :1])
    first_key = lax.cummax(jnp.where(jnp.concatenate([edge, changes], axis=1), index, 0), axis=1)
    last_query = lax.cummin(jnp.where(jnp.concatenate([changes, edge], axis=1), index, length - 1), axis=1,
                            reverse=True)
    if window is None:
        return first_key, last_query
    return jnp.maximum(first_key, index - window + 1), jnp.minimum(last_query, index + window - 1)


def key_block_bounds(segment_ids, block_q, block_k, window=None):
    """The key blocks each query block visits (forward, dq): `(first, stop)`, each `(batch, seq // block_q)` int32.

    `first`: the block of the first key its first query may see (first keys
    never decrease along a row); `stop`: one past the block of its last
    query (causal). `segment_ids` as the kernels get them.

    Example (two examples of 6 and 10 tokens, blocks of 4):
    >>> import numpy as np
    >>> first, stop = key_block_bounds(np.array([[1] * 6 + [2] * 10]), 4, 4)
    >>> np.asarray(first).tolist(), np.asarray(stop).tolist()
    ([[0, 0, 1, 1]], [[1, 2, 3, 4]])
    """
    first_key, _ = first_key_and_last_query(segment_ids, window)
    blocks = first_key.shape[-1] // block_q
    stop = -(-(jnp.arange(1, blocks + 1, dtype=jnp.int32) * block_q) // block_k)
    return first_key[:, ::block_q] // block_k, jnp.broadcast_to(stop, (first_key.shape[0], blocks))


def query_block_bounds(segment_ids, block_q, block_k, window=None):
    """The query blocks each key block is visited by (dk, dv): `(first, stop)`, each `(batch, seq // block_k)` int32.

    `first`: the block of its first key (causal); `stop`: one past the block
    of the last query that may see its last key (last queries never decrease
    along a row). `segment_ids` as the kernels get them.

    Example (two examples of 6 and 10 tokens, blocks of 4):
    >>> import numpy as np
    >>> first, stop = query_block_bounds(np.array([[1] * 6 + [2] * 10]), 4, 4)
    >>> np.asarray(first).tolist(), np.asarray(stop).tolist()
    ([[0, 1, 2, 3]], [[2, 4, 4, 4]])
    """
    _, last_query = first_key_and_last_query(segment_ids, window)
    blocks = last_query.shape[-1] // block_k
    first = jnp.arange(blocks, dtype=jnp.int32) * block_k // block_q
    return jnp.broadcast_to(first, (last_query.shape[0], blocks)), last_query[:, block_k - 1::block_k] // block_q + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _attention(query, key, value, segment_ids, soft_cap, window, blocks, interpret):
    """The kernels' attention on padded inputs (query scaled, ids from `splash_segment_ids`)."""
    out, _ = _forward(query, key, value, segment_ids, soft_cap, window, blocks, interpret)
    return out


def _attention_forward(query, key, value, segment_ids, soft_cap, window, blocks, interpret):
    outputs = _forward(query, key, value, segment_ids, soft_cap, window, blocks, interpret)
    out, log_sum_exp = checkpoint_name(outputs, FORWARD_OUTPUTS)
    return out, (query, key, value, segment_ids, out, log_sum_exp)


def _attention_backward(soft_cap, window, blocks, interpret, residuals, dout):
    query, key, value, segment_ids, out, log_sum_exp = residuals
    delta = jnp.einsum("bshd,bshd->bhs", out.astype(jnp.float32), dout.astype(jnp.float32))
    gradients = (query, key, value, segment_ids, dout, log_sum_exp, delta, soft_cap, window, blocks, interpret)
    dquery = _query_gradient(*gradients)
    dkey, dvalue = _key_value_gradients(*gradients)
    return dquery, dkey, dvalue, None


_attention.defvjp(_attention_forward, _attention_backward)


def _token_block(block, dim, groups=1):
    """The grid's i-th block of `block` tokens of one head (head h // groups); grid: (block, row, query head)."""
    return pl.BlockSpec((None, block, None, dim), lambda i, b, h: (b, i, h // groups, 0))


def _whole_row(length, dim, groups=1):
    """All `length` tokens of one head (head h // groups) of the grid's row."""
    return pl.BlockSpec((None, length, None, dim), lambda i, b, h: (b, 0, h // groups, 0))


def _statistic_block(block):
    """The grid's i-th block of `block` tokens of a `(batch, heads, seq)` per-token statistic, one head."""
    return pl.BlockSpec((None, None, block), lambda i, b, h: (b, h, i))


def _statistic_row(length):
    """All `length` tokens of a `(batch, heads, seq)` per-token statistic, the grid's row and head."""
    return pl.BlockSpec((None, None, length), lambda i, b, h: (b, h, 0))


def _row_ids(length):
    """The grid's row of the `(batch, seq)` segment ids."""
    return pl.BlockSpec((None, length), lambda i, b, h: (b, 0))


def _block_bound():
    """One scalar of a `(batch, blocks)` bound: the grid's row and block."""
    return pl.BlockSpec((None, None), lambda i, b, h: (b, i))


def _forward(query, key, value, segment_ids, soft_cap, window, blocks, interpret):
    """`(out, log_sum_exp)`: out like `query`; base-2 log-sum-exp `(batch, heads, seq)` float32."""
    batch, length, heads, dim = query.shape
    groups = heads // key.shape[2]
    first, stop = key_block_bounds(segment_ids, blocks.block_q, blocks.block_k, window)
    kernel = functools.partial(_forward_kernel, block_q=blocks.block_q, block_k=blocks.block_k, soft_cap=soft_cap,
                               window=window)
    return pl.pallas_call(
        kernel,
        grid=(length // blocks.block_q, batch, heads),
        in_specs=[_block_bound(), _block_bound(), _row_ids(length), _token_block(blocks.block_q, dim),
                  _whole_row(length, dim, groups), _whole_row(length, dim, groups)],
        out_specs=[_token_block(blocks.block_q, dim), _statistic_block(blocks.block_q)],
        out_shape=[jax.ShapeDtypeStruct(query.shape, query.dtype),
                   jax.ShapeDtypeStruct((batch, heads, length), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages),
        interpret=interpret,
        name="segment_flash_forward",
    )(first, stop, segment_ids, query, key, value)


def _query_gradient(query, key, value, segment_ids, dout, log_sum_exp, delta, soft_cap, window, blocks, interpret):
    """dquery, like `query`: per query block, a loop over the key blocks it sees."""
    batch, length, heads, dim = query.shape
    groups = heads // key.shape[2]
    block_q, block_k = blocks.block_q_dq, blocks.block_k_dq
    first, stop = key_block_bounds(segment_ids, block_q, block_k, window)
    kernel = functools.partial(_query_gradient_kernel, block_q=block_q, block_k=block_k, soft_cap=soft_cap,
                               window=window)
    return pl.pallas_call(
        kernel,
        grid=(length // block_q, batch, heads),
        in_specs=[_block_bound(), _block_bound(), _row_ids(length), _token_block(block_q, dim),
                  _whole_row(length, dim, groups), _whole_row(length, dim, groups), _token_block(block_q, dim),
                  _statistic_block(block_q), _statistic_block(block_q)],
        out_specs=_token_block(block_q, dim),
        out_shape=jax.ShapeDtypeStruct(query.shape, query.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=blocks.backward_num_warps,
                                             num_stages=blocks.backward_num_stages),
        interpret=interpret,
        name="segment_flash_dq",
    )(first, stop, segment_ids, query, key, value, dout, log_sum_exp, delta)


def _key_value_gradients(query, key, value, segment_ids, dout, log_sum_exp, delta, soft_cap, window, blocks,
                         interpret):
    """`(dkey, dvalue)` like `key`, `value`: per key block and query head, a loop over the query blocks seeing it."""
    batch, length, heads, dim = query.shape
    kv_heads = key.shape[2]
    groups = heads // kv_heads
    block_q, block_k = blocks.block_q_dkv, blocks.block_k_dkv
    first, stop = query_block_bounds(segment_ids, block_q, block_k, window)
    kernel = functools.partial(_key_value_gradients_kernel, block_q=block_q, block_k=block_k, soft_cap=soft_cap,
                               window=window)
    per_query_head = jax.ShapeDtypeStruct(query.shape, jnp.float32)
    dkey, dvalue = pl.pallas_call(
        kernel,
        grid=(length // block_k, batch, heads),
        in_specs=[_block_bound(), _block_bound(), _row_ids(length), _whole_row(length, dim),
                  _token_block(block_k, dim, groups), _token_block(block_k, dim, groups), _whole_row(length, dim),
                  _statistic_row(length), _statistic_row(length)],
        out_specs=[_token_block(block_k, dim), _token_block(block_k, dim)],
        out_shape=[per_query_head, per_query_head],
        compiler_params=plgpu.CompilerParams(num_warps=blocks.backward_num_warps,
                                             num_stages=blocks.backward_num_stages),
        interpret=interpret,
        name="segment_flash_dkv",
    )(first, stop, segment_ids, query, key, value, dout, log_sum_exp, delta)

    def summed_over_group(gradient, like):
        return gradient.reshape(batch, length, kv_heads, groups, dim).sum(axis=3).astype(like.dtype)

    return summed_over_group(dkey, key), summed_over_group(dvalue, value)


def _visible(query_index, query_ids, key_index, key_ids, window):
    """`(queries, keys)` bool: same example, causal, and inside the window."""
    distance = query_index[:, None] - key_index[None, :]
    visible = (query_ids[:, None] == key_ids[None, :]) & (distance >= 0)
    return visible if window is None else visible & (distance < window)


def _logits(query, key, soft_cap):
    """`(logits, capped)`: float32 `query @ key.T`, soft-capped; `tanh(raw / soft_cap)` (None without a cap)."""
    raw = plgpu.dot(query, key, trans_b=True)
    if soft_cap is None:
        return raw, None
    capped = jnp.tanh(raw / soft_cap)
    return capped * soft_cap, capped


def _forward_kernel(first_ref, stop_ref, ids_ref, query_ref, key_ref, value_ref, out_ref, log_sum_exp_ref, *,
                    block_q, block_k, soft_cap, window):
    query_block = pl.program_id(0)
    query = query_ref[...]
    query_index = query_block * block_q + jnp.arange(block_q)
    query_ids = ids_ref[pl.ds(query_block * block_q, block_q)]

    def visit(key_block, carry):
        out, row_max, row_sum = carry
        keys = pl.ds(key_block * block_k, block_k)
        logits, _ = _logits(query, key_ref[keys, :], soft_cap)
        visible = _visible(query_index, query_ids, key_block * block_k + jnp.arange(block_k), ids_ref[keys], window)
        logits = jnp.where(visible, logits * LOG2_E, MASK_VALUE)
        new_max = jnp.maximum(row_max, jnp.max(logits, axis=-1))
        correction = jnp.exp2(row_max - new_max)
        probs = jnp.exp2(logits - new_max[:, None])
        value = value_ref[keys, :]
        out = correction[:, None] * out + plgpu.dot(probs.astype(value.dtype), value)
        return out, new_max, correction * row_sum + jnp.sum(probs, axis=-1)

    start = (jnp.zeros((block_q, query.shape[-1]), jnp.float32), jnp.full((block_q,), -jnp.inf, jnp.float32),
             jnp.zeros((block_q,), jnp.float32))
    out, row_max, row_sum = lax.fori_loop(first_ref[...], stop_ref[...], visit, start)
    out_ref[...] = (out / row_sum[:, None]).astype(out_ref.dtype)
    log_sum_exp_ref[...] = row_max + jnp.log2(row_sum)


def _logit_gradients(query, key, value, dout, log_sum_exp, delta, visible, soft_cap):
    """`(probs, dlogits)`, `(queries, keys)` float32: the softmax, recomputed, and the gradient of the raw logits."""
    logits, capped = _logits(query, key, soft_cap)
    probs = jnp.exp2(jnp.where(visible, logits * LOG2_E, MASK_VALUE) - log_sum_exp[:, None])
    dlogits = probs * (plgpu.dot(dout, value, trans_b=True) - delta[:, None])
    if soft_cap is not None:
        dlogits = dlogits * (1 - capped * capped)
    return probs, dlogits


def _query_gradient_kernel(first_ref, stop_ref, ids_ref, query_ref, key_ref, value_ref, dout_ref, log_sum_exp_ref,
                           delta_ref, dquery_ref, *, block_q, block_k, soft_cap, window):
    query_block = pl.program_id(0)
    query, dout = query_ref[...], dout_ref[...]
    log_sum_exp, delta = log_sum_exp_ref[...], delta_ref[...]
    query_index = query_block * block_q + jnp.arange(block_q)
    query_ids = ids_ref[pl.ds(query_block * block_q, block_q)]

    def visit(key_block, dquery):
        keys = pl.ds(key_block * block_k, block_k)
        key = key_ref[keys, :]
        visible = _visible(query_index, query_ids, key_block * block_k + jnp.arange(block_k), ids_ref[keys], window)
        _, dlogits = _logit_gradients(query, key, value_ref[keys, :], dout, log_sum_exp, delta, visible, soft_cap)
        return dquery + plgpu.dot(dlogits.astype(key.dtype), key)

    dquery = lax.fori_loop(first_ref[...], stop_ref[...], visit, jnp.zeros(query.shape, jnp.float32))
    dquery_ref[...] = dquery.astype(dquery_ref.dtype)


def _key_value_gradients_kernel(first_ref, stop_ref, ids_ref, query_ref, key_ref, value_ref, dout_ref,
                                log_sum_exp_ref, delta_ref, dkey_ref, dvalue_ref, *, block_q, block_k, soft_cap,
                                window):
    key_block = pl.program_id(0)
    key, value = key_ref[...], value_ref[...]
    key_index = key_block * block_k + jnp.arange(block_k)
    key_ids = ids_ref[pl.ds(key_block * block_k, block_k)]

    def visit(query_block, carry):
        dkey, dvalue = carry
        queries = pl.ds(query_block * block_q, block_q)
        query, dout = query_ref[queries, :], dout_ref[queries, :]
        visible = _visible(query_block * block_q + jnp.arange(block_q), ids_ref[queries], key_index, key_ids, window)
        probs, dlogits = _logit_gradients(query, key, value, dout, log_sum_exp_ref[queries], delta_ref[queries],
                                          visible, soft_cap)
        dvalue = dvalue + plgpu.dot(probs.astype(dout.dtype), dout, trans_a=True)
        return dkey + plgpu.dot(dlogits.astype(query.dtype), query, trans_a=True), dvalue

    start = (jnp.zeros(key.shape, jnp.float32), jnp.zeros(value.shape, jnp.float32))
    dkey, dvalue = lax.fori_loop(first_ref[...], stop_ref[...], visit, start)
    dkey_ref[...] = dkey
    dvalue_ref[...] = dvalue
