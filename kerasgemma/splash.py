"""Splash attention (JAX's Pallas TPU kernel) over packed rows.

`splash_attention` computes causal attention within examples, as
`kerasgemma.attention.segment_causal_mask` defines it, with the Splash
attention kernel of `jax.experimental.pallas.ops.tpu.splash_attention`
(sparse flash attention: scores are computed block by block, never
materialised, and blocks its static mask excludes are skipped). It takes and
returns keras-hub's layout (`(batch, seq, heads, head_dim)`);
`kerasgemma.attention.packed_attention` calls it from every decoder block
when `splash_wanted()` (the default JAX backend is a TPU).

What the kernel gets, per row of the batch:
- a static `CausalMask`, or `LocalMask(window_size=(window - 1, 0))` for a
  sliding-window layer: position i sees j in [i - window + 1, i]. Splash skips
  the tiles above the diagonal and, for a window, the tiles wholly before it.
- `SegmentIds` from the packed row's segment ids, so a token attends only
  within its example. Splash applies segment ids *inside* each tile it
  computes (jax 0.10.2, `_apply_mask_and_soft_cap`): tiles that lie wholly
  across two examples below the diagonal are computed and masked, not skipped.
  Skipping them needs the mask as a dynamic array (`make_splash_mha(mask=
  jax.Array)`), which jax 0.10.2 cannot build inside `jax.jit` (its
  `MaskInfo.is_dynamic_mask` becomes a traced array and
  `SplashAttentionKernel.__call__` fails with a TracerBoolConversionError).
- Padding (segment 0) and the positions added to reach a multiple of 128
  (Splash's tiles are multiples of 128 tokens) get an id of their own each,
  so each attends to itself alone, as in `segment_causal_mask`; their outputs
  are dropped or carry no loss.
- `attn_logits_soft_cap`: Gemma 2's `tanh(logits / cap) * cap`, applied in
  the kernel after the query scale, as keras-hub's einsum path does.
- keys and values with their own head count: `make_splash_mha` maps query
  head h to key/value head `h // (query_heads // kv_heads)`, keras-hub's
  grouping (MQA is one key/value head).

Tiles are 512 tokens where 512 divides the padded length, else 256, else 128
(512 is MaxText's Splash default; not tuned on a TPU here). Under a
`keras.distribution` that spans several devices the kernel runs inside
`jax.shard_map` (`kerasgemma.kernel_sharding.over_devices`): a Pallas TPU
kernel cannot be partitioned by XLA.

On a backend other than a TPU the kernel runs in Pallas' interpret mode
(plain JAX ops, slow): that is how the tests check it on a CPU.
"""

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from kerasgemma.kernel_sharding import over_devices

# Splash's tile sizes must be multiples of 128 (TPU vector lanes); the
# sequence is padded to a multiple of the smallest.
TILE_SIZES = (512, 256, 128)


def splash_wanted():
    """Whether packed attention should run Splash: the default JAX backend is a TPU.

    Example:
    >>> splash_wanted()  # the tests run on a CPU
    False
    """
    return jax.default_backend() == "tpu"


def splash_segment_ids(segment_ids, length):
    """Segment ids for Splash, `(batch, length)` int32: padding gets an id of its own per position.

    Real examples keep their (positive) ids; padding (segment 0) and the
    positions past `segment_ids`' end get `-(position + 1)`, so no two of them
    share an id.

    Example:
    >>> import numpy as np
    >>> np.asarray(splash_segment_ids(np.array([[1, 1, 2, 0]]), 6)).tolist()
    [[1, 1, 2, -4, -5, -6]]
    """
    segment_ids = jnp.asarray(segment_ids, jnp.int32)
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, length - segment_ids.shape[1])))
    own = -1 - jnp.arange(length, dtype=jnp.int32)
    return jnp.where(segment_ids == 0, own[None, :], segment_ids)


def splash_kernel(length, query_heads, soft_cap=None, window=None, interpret=False):
    """The Splash kernel for one row of `length` tokens (a multiple of 128).

    Call it as `kernel(q, k, v, segment_ids=SegmentIds(ids, ids))` with `q`
    `(query_heads, length, head_dim)` and `k`, `v` `(kv_heads, length,
    head_dim)`; the query is not scaled in the kernel.

    Example:
    >>> splash_kernel(1024, 8, window=512).kwargs["block_sizes"].block_q
    512
    """
    shape = (length, length)
    mask = splash.CausalMask(shape) if window is None else splash.LocalMask(shape, (window - 1, 0), 0)
    tile = next(size for size in TILE_SIZES if length % size == 0)
    tiles = splash.BlockSizes(
        block_q=tile, block_kv=tile, block_kv_compute=tile,
        block_q_dkv=tile, block_kv_dkv=tile, block_kv_dkv_compute=tile,
        block_q_dq=tile, block_kv_dq=tile,
    )
    return splash.make_splash_mha(
        splash.MultiHeadMask((mask,) * query_heads), block_sizes=tiles, head_shards=1, q_seq_shards=1,
        attn_logits_soft_cap=soft_cap, interpret=interpret,
    )


def splash_attention(query, key, value, segment_ids, scale, soft_cap=None, window=None):
    """Causal attention within packed examples through Splash, in keras-hub's layout.

    Args:
        query: `(batch, seq, query_heads, head_dim)`.
        key: `(batch, seq, kv_heads, head_dim)`; `value` alike.
        segment_ids: `(batch, seq)` ints, 0 for padding.
        scale: float. Multiplies the query (in its dtype) before the scores.
        soft_cap: float or None. Attention-logit soft-cap (Gemma 2).
        window: int or None. Sliding-window size (itself included).

    Returns:
        `(batch, seq, query_heads, head_dim)` in the query's dtype.

    Example (interpret mode on a CPU; equals the dense computation):
    >>> import keras, numpy as np
    >>> from kerasgemma.attention import segment_causal_mask
    >>> q = np.random.default_rng(0).normal(size=(1, 6, 2, 4)).astype("float32")
    >>> segment_ids = np.array([[1, 1, 1, 2, 2, 0]])
    >>> mask = np.asarray(segment_causal_mask(segment_ids))[:, None]
    >>> dense = keras.ops.dot_product_attention(q, q, q, mask=mask, scale=0.5)
    >>> bool(np.allclose(splash_attention(q, q, q, segment_ids, 0.5), dense, atol=1e-5))
    True
    """
    batch, length, query_heads, _ = query.shape
    kv_heads = key.shape[2]
    padded = -(-length // TILE_SIZES[-1]) * TILE_SIZES[-1]

    def heads_first(x):  # (batch, seq, heads, dim) -> (batch, heads, padded, dim)
        return jnp.transpose(jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))), (0, 2, 1, 3))

    query = jnp.asarray(query)
    query = query * jnp.asarray(scale, query.dtype)
    ids = splash_segment_ids(segment_ids, padded)

    def rows(query, key, value, ids):
        kernel = splash_kernel(padded, query.shape[1], soft_cap, window, interpret=not splash_wanted())
        return jax.vmap(kernel)(query, key, value, segment_ids=splash.SegmentIds(ids, ids))

    out = over_devices(rows, query_heads, kv_heads, head_axis=1)(heads_first(query), heads_first(key), heads_first(value), ids)
    return jnp.transpose(out, (0, 2, 1, 3))[:, :length]
