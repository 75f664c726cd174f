"""Attention alone, forward + backward, on packed HC3-like rows: each kernel kerasgemma can run, timed side by side.

Per shape (the attention of one decoder layer of a model in the table of
`train_throughput.py`, 8 rows of 1024 tokens unless named), per arm:
- `cudnn_hint`: kerasgemma's dense path on a GPU: `keras.ops.dot_product_attention`
  with the segment mask and `is_causal=True` (cuDNN skips the blocks above the
  diagonal, computes and masks the rest);
- `xla_softcap`: keras-hub's own computation for a soft-capped model (Gemma 2):
  einsum scores, `tanh` cap, mask, float32 softmax, einsum;
- `tokamax_mosaic` / `tokamax_triton`: tokamax's (Google's JAX kernel library,
  `pip install tokamax`) flash attention, Mosaic GPU (Hopper) / Triton, told the
  first key each query may see (`key_start`) and `is_causal`, so it can skip
  the blocks across examples too, with the soft-cap in the kernel;
  `tokamax_xla`: the same call on tokamax's dense XLA version (any device);
- `flash_segments`: kerasgemma's own Pallas Triton kernel
  (`kerasgemma.flash_attention.segment_flash_attention`, its default
  `BlockSizes`): skips the key blocks outside each query block's example
  and window, soft-cap in the kernel; `flash_segments_128`: the same with
  forward blocks of 128 (8 warps, 1 stage: two ask more shared memory than
  an H200 has at head dim 256). Off a GPU they run in Pallas' interpret mode.
Each arm's output is compared with a float32 dense reference (max |diff|).

tokamax 0.0.12 (the newest on PyPI on 2026-11-30) does not run on the GPU
image's JAX (bench/NOTES.md has the errors); the arms stay so that a later
tokamax can be measured with the same command.

    python bench/attention_kernels.py --out bench/results/attention.json
    python bench/attention_kernels.py --smoke        # tiny shapes on a CPU
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

import train_throughput as tt  # noqa: E402

# name -> rows, length, query heads, kv heads, head dim, soft-cap, window
SHAPES = {
    "gemma_2b": (8, 1024, 8, 1, 256, None, None),
    "gemma2_2b": (8, 1024, 8, 4, 256, 50.0, None),
    "gemma3_1b_local": (8, 1024, 4, 1, 256, None, 512),
    "gemma3_1b_global": (8, 1024, 4, 1, 256, None, None),
    "gemma_2b_4096": (2, 4096, 8, 1, 256, None, None),
    "gemma2_2b_4096": (2, 4096, 8, 4, 256, 50.0, 4096),
    "tiny": (2, 128, 2, 1, 16, None, None),
    "tiny_softcap": (2, 128, 2, 2, 16, 5.0, 32),
}
ARMS = ("cudnn_hint", "xla_softcap", "tokamax_mosaic", "tokamax_triton", "tokamax_xla", "flash_segments",
        "flash_segments_128")


def attention_mask(segment_ids, window):
    """`(batch, seq, seq)`: kerasgemma's segment-causal mask, narrowed to a sliding `window` (None: no window)."""
    import jax.numpy as jnp

    from kerasgemma.attention import segment_causal_mask

    mask = segment_causal_mask(segment_ids)
    if window:
        index = jnp.arange(mask.shape[-1])
        mask = mask & (index[:, None] - index[None, :] < window)[None]
    return mask


def dense_reference(query, key, value, segment_ids, scale, soft_cap, window):
    """Float32 dense attention within examples (the function every arm must compute)."""
    import jax
    import jax.numpy as jnp

    q, k, v = (jnp.asarray(x, jnp.float32) for x in (query, key, value))
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k)
    if soft_cap:
        logits = jnp.tanh(logits / soft_cap) * soft_cap
    logits = jnp.where(attention_mask(segment_ids, window)[:, None], logits, -1e30)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def key_start(segment_ids, window=None):
    """The first key each query may attend to, `(batch, seq)` int32: its example's start (or its window's).

    Padding (segment 0) starts at itself.

    >>> import numpy as np
    >>> np.asarray(key_start(np.array([[1, 1, 1, 2, 2, 0, 0]]))).tolist()
    [[0, 0, 0, 3, 3, 5, 6]]
    >>> np.asarray(key_start(np.array([[1, 1, 1, 1]]), window=2)).tolist()
    [[0, 0, 1, 2]]
    """
    from kerasgemma.flash_attention import first_key_and_last_query
    from kerasgemma.splash import splash_segment_ids

    first_key, _ = first_key_and_last_query(splash_segment_ids(segment_ids, segment_ids.shape[-1]), window)
    return first_key


def tokamax_attention(implementation, segment_ids, scale, soft_cap, window):
    """`(q, k, v) -> out` through tokamax's `implementation` ("mosaic_gpu", "triton", "xla")."""
    import jax.numpy as jnp
    from absl import flags
    from tokamax._src.ops.attention import api, base

    # tokamax 0.0.12 parses the process's own sys.argv as absl flags on first use
    # (tokamax/_src/config.py): "UnrecognizedFlagError: Unknown command line flag"
    # for any option of the caller. Marking the flags parsed keeps its defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    mask = base.Mask(k_start=key_start(segment_ids, window)[:, None, :], is_causal=True)

    def attend(q, k, v):
        q = q * jnp.asarray(scale, q.dtype)  # keras-hub scales the query in its dtype
        return api.IMPLEMENTATIONS[implementation](q, k, v, mask=mask, logits_scale=1.0, logits_soft_cap=soft_cap)
    return attend


def arm_function(arm, segment_ids, scale, soft_cap, window):
    """`(q, k, v) -> out` for `arm`, with the row's segment ids bound."""
    import jax
    import jax.numpy as jnp
    import keras

    from kerasgemma.attention import causal_attention_op
    from kerasgemma.flash_attention import BlockSizes
    from kerasgemma.flash_attention import segment_flash_attention

    if arm.startswith("flash_segments"):
        wide = BlockSizes(block_q=128, block_k=128, num_warps=8, num_stages=1)
        blocks = wide if arm == "flash_segments_128" else None
        return lambda q, k, v: segment_flash_attention(q, k, v, segment_ids, scale, soft_cap, window, blocks)
    if arm.startswith("tokamax_"):
        return tokamax_attention(arm.split("_", 1)[1].replace("mosaic", "mosaic_gpu"), segment_ids, scale, soft_cap,
                                 window)
    mask = attention_mask(segment_ids, window)
    if arm == "cudnn_hint":
        def attend(q, k, v):
            with causal_attention_op():
                return keras.ops.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale)
        return attend

    def xla_softcap(q, k, v):  # keras-hub's GemmaAttention._compute_attention, einsum path
        groups = q.shape[2] // k.shape[2]
        q = q * jnp.asarray(scale, q.dtype)
        b, t, _, d = q.shape
        q = q.reshape(b, t, k.shape[2], groups, d)
        logits = jnp.einsum("btkgh,bskh->bkgts", q, k)
        if soft_cap:
            logits = jnp.tanh(logits / soft_cap) * soft_cap
        logits = jnp.where(mask[:, None, None], logits.astype(jnp.float32), -1e9)
        probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
        out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
        return out.reshape(b, t, -1, d)
    return xla_softcap


def run_arm(arm, shape, steps, seed=0):
    import jax
    import jax.numpy as jnp

    rows, length, heads, kv_heads, head_dim, soft_cap, window = SHAPES[shape]
    sequences = tt.make_sequences(rows * length // 100, 1000, seed, max_length=length)
    batch = tt.packed_plan(sequences, rows, length, 1)[0]
    segment_ids = jnp.asarray(batch["segment_ids"])
    rng = np.random.default_rng(seed)
    q, k, v, dout = (jnp.asarray(rng.normal(size=(rows, length, h, head_dim)), jnp.bfloat16)
                     for h in (heads, kv_heads, kv_heads, heads))
    scale = head_dim ** -0.5 if soft_cap is None else 1.0  # random logits reach the cap with scale 1
    row = dict(arm=arm, shape=shape, device=jax.devices()[0].device_kind)
    try:
        attend = arm_function(arm, segment_ids, scale, soft_cap, window)

        @jax.jit
        def forward_backward(q, k, v):
            out, pullback = jax.vjp(attend, q, k, v)
            return out, pullback(dout)

        started = time.perf_counter()
        out, grads = forward_backward(q, k, v)
        jax.block_until_ready(grads)
        row["compile_seconds"] = time.perf_counter() - started
    except Exception as error:  # noqa: BLE001 - an arm that cannot run here is a row saying why
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        return row
    real = np.asarray(segment_ids) != 0
    reference = dense_reference(q, k, v, segment_ids, scale, soft_cap, window)
    row["max_abs_diff"] = float(jnp.max(jnp.abs(out.astype(jnp.float32) - reference)[real]))
    started = time.perf_counter()
    for _ in range(steps):
        out, grads = forward_backward(q, k, v)
    jax.block_until_ready(grads)
    row["ms"] = 1000 * (time.perf_counter() - started) / steps
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=[s for s in SHAPES if not s.startswith("tiny")],
                        choices=sorted(SHAPES))
    parser.add_argument("--arms", nargs="+", default=list(ARMS[:4]), choices=ARMS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", help="Write the rows as JSON here.")
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes, 1 step (a CPU is fine).")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shapes, args.steps = ["tiny", "tiny_softcap"], 1
    rows = []
    print("| shape | arm | fwd+bwd ms | vs cudnn_hint | max abs diff | compile s |\n|---|---|---|---|---|---|")
    for shape in args.shapes:
        base = None
        for arm in args.arms:
            row = run_arm(arm, shape, args.steps)
            rows.append(row)
            if "error" in row:
                print(f"| {shape} | {arm} | failed: {row['error'][:120]} | | | |", flush=True)
                continue
            base = base or (row["ms"] if arm == "cudnn_hint" else None)
            ratio = f"{base / row['ms']:.2f}x" if base else ""
            print(f"| {shape} | {arm} | {row['ms']:.2f} | {ratio} | {row['max_abs_diff']:.2e} | "
                  f"{row['compile_seconds']:.1f} |", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(dict(date=time.strftime("%Y-%m-%d"), rows=rows), handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
