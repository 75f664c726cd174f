"""Tokens/s and peak memory of LoRA training: one device, then data and model parallel over all.

Each mode runs in its own Python process (so peak memory is its own, and the
previous mode's buffers are gone): `single` on device 0 with the per-replica
batch, `data` over an N×1 mesh with N times that batch, `model` over a 1×N
mesh with the per-replica batch. Weights are random (no download); the step
is kerasgemma's own jitted train step on full-length packed rows.

    python bench/multi_gpu.py --shape gemma_2b --seq 512 --batch 8 --steps 20 --out multi_gpu.json
    python bench/multi_gpu.py --shape gemma3_1b --out g3.json
    python bench/multi_gpu.py --smoke --out /tmp/smoke.json      # CPU, 2 virtual devices, seconds
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from train_throughput import SHAPES as THROUGHPUT_SHAPES  # noqa: E402

# The published text-model shapes of train_throughput.py (keras-hub preset configs), built with random weights,
# and Gemma 7B.
SHAPES = {name: (shape["arch"], shape["keras"]) for name, shape in THROUGHPUT_SHAPES.items()
          if not name.startswith("tiny")}
SHAPES["gemma_7b"] = ("gemma", dict(vocabulary_size=256000, num_layers=28, num_query_heads=16, num_key_value_heads=16,
                                    hidden_dim=3072, intermediate_dim=49152, head_dim=256))
# Heads and widths divisible by 8, so model parallel really splits every kernel.
SHAPES["tiny"] = ("gemma", dict(vocabulary_size=512, num_layers=2, num_query_heads=8, num_key_value_heads=8,
                                hidden_dim=32, intermediate_dim=64, head_dim=8))
MODES = ("single", "data", "model")


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gemma_2b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seq", type=int, default=512, help="tokens per row")
    parser.add_argument("--batch", type=int, default=8, help="rows per data-parallel replica")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--smoke", action="store_true", help="CPU, 2 virtual devices, tiny shape, 2 steps")
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--only", choices=MODES, help=argparse.SUPPRESS)  # one mode, in a child process
    return parser


def run_mode(args):
    """Build the model under the mode's distribution, time the train step, return a record."""
    import jax
    import keras
    import numpy as np

    from kerasgemma.distribution import Strategy, configure, report_unsharded, shard_batch
    from kerasgemma.model import enable_lora
    from kerasgemma.tiny import _CLASSES
    from kerasgemma.training.step import make_train_step

    count = jax.device_count()
    mesh = {"single": (1, 1), "data": (count, 1), "model": (1, count)}[args.only]
    kind = {"single": "none", "data": "data", "model": "model"}[args.only]
    architecture, config = SHAPES[args.shape]
    configure(Strategy(kind, mesh, "benchmark"), architecture, config["num_key_value_heads"])
    keras.utils.set_random_seed(0)
    backbone_cls, _, _, lm_cls = _CLASSES[architecture]
    causal_lm = lm_cls(backbone=backbone_cls(**config, dtype=args.dtype), preprocessor=None)
    enable_lora(causal_lm, rank=args.lora_rank, targets=("query", "value"))
    unsharded = report_unsharded(causal_lm, threshold_bytes=16 * 2**20)
    optimizer = keras.optimizers.AdamW(learning_rate=1e-4)
    optimizer.build(causal_lm.trainable_variables)
    state = (
        [jax.numpy.array(v.value) for v in causal_lm.trainable_variables],
        [jax.numpy.array(v.value) for v in optimizer.variables],
    )
    step = make_train_step(causal_lm, optimizer)
    non_trainable = [v.value for v in causal_lm.non_trainable_variables]

    rows = args.batch * mesh[0]
    rng = np.random.default_rng(0)
    shape = (1, rows, args.seq)
    batch = {
        "token_ids": rng.integers(4, config["vocabulary_size"], shape, dtype=np.int32),
        "target_ids": rng.integers(4, config["vocabulary_size"], shape, dtype=np.int32),
        "loss_weights": np.ones(shape, np.float32),
        "segment_ids": np.ones(shape, np.int32),
    }
    batch = shard_batch(batch, batch_axis=1)
    for _ in range(2):  # compile, then one more in case the state's layout changed
        state, loss, _ = step(state, non_trainable, batch)
    first_loss = float(loss)
    started = time.perf_counter()
    for _ in range(args.steps):
        state, loss, _ = step(state, non_trainable, batch)
    last_loss = float(loss)  # waits for the device
    seconds = time.perf_counter() - started
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.devices()[: mesh[0] * mesh[1]]]
    tokens = args.steps * rows * args.seq
    return {
        "mode": args.only,
        "mesh": list(mesh),
        "devices_used": mesh[0] * mesh[1],
        "global_batch": rows,
        "seq": args.seq,
        "steps": args.steps,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "peak_bytes_per_device": max(peaks) if all(p is not None for p in peaks) else None,
        "losses": [first_loss, last_loss],
        "compilations": step._cache_size(),
        "unsharded": [path for path, _, _ in unsharded],
        "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "device_count": count,
    }


def print_table(records):
    single = next((r["tokens_per_second"] for r in records if r["mode"] == "single"), None)
    print(f"\n{records[0]['device']} × {records[0]['device_count']}")
    print("| mode | mesh | global batch | tokens/s | vs 1 device | peak GiB/device |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in records:
        ratio = f"{r['tokens_per_second'] / single:.2f}×" if single else "-"
        peak = f"{r['peak_bytes_per_device'] / 2**30:.1f}" if r["peak_bytes_per_device"] else "n/a"
        mesh = f"{r['mesh'][0]}×{r['mesh'][1]}"
        print(f"| {r['mode']} | {mesh} | {r['global_batch']} | {r['tokens_per_second']:,.0f} | {ratio} | {peak} |")


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.smoke:
        args.shape, args.dtype, args.seq, args.batch, args.steps = "tiny", "float32", 32, 2, 2
    if args.only:
        record = run_mode(args)
        with open(args.out, "w") as file:
            json.dump(record, file)
        return
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    if args.smoke:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
        env["JAX_PLATFORMS"] = "cpu"
    records = []
    for mode in args.modes.split(","):
        part = f"{args.out}.{mode}.json"
        command = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]), "--only", mode, "--out", part]
        print(f"== {mode}", flush=True)
        subprocess.run(command, env=env, check=True)
        with open(part) as file:
            records.append(json.load(file))
        os.remove(part)
    print_table(records)
    with open(args.out, "w") as file:
        json.dump({"shape": args.shape, "dtype": args.dtype, "lora_rank": args.lora_rank, "results": records}, file, indent=2)


if __name__ == "__main__":
    main()
