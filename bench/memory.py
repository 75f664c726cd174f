"""Peak memory and useful tok/s of LoRA training with a quantized base and rematerialisation (issue 17).

One row = model shape x base precision (bf16 / int8 / int4) x remat (none / block / dots) x sequence length,
named `MODEL:PRECISION:REMAT:LENGTH`, e.g. `gemma_2b:bf16:block:4096`. Random weights built from the shape's config
(bench/train_throughput.py's `SHAPES`), LoRA rank 4 on query/value, AdamW, packed HC3-like rows. Each row runs in
a fresh subprocess, so `peak_bytes_in_use` is that row's; a row that runs out of memory is recorded as "OOM" and
the next row runs.

The model is built and quantized on the host CPU (`kerasgemma.distribution.on_host`) and only then are its
arrays put on the GPU, so the peak is the training step's, not the float weights' before quantization
(`kerasgemma train` still loads in `dtype` on the device first: see the plan's "loading" figure). Beside each
measured peak is `kerasgemma.distribution.memory`'s estimate for the same setting.

    python bench/memory.py --smoke                                  # tiny shapes on CPU, seconds
    python bench/memory.py --out bench/results/memory_h200.json     # DEFAULT_ROWS, ~6-8 minutes on one H200
    python bench/memory.py --rows gemma_2b:bf16:dots:4096 gemma4_e4b:int4:block:4096 --batch-size 2

Time per row on one H200 (estimated, not measured: imports ~10 s, building random weights and quantizing on
the host 15-40 s, compiling 20-40 s, 4 steps a few seconds): about 60-80 s, so the 6 default rows take
6-8 minutes.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from train_throughput import SHAPES
from train_throughput import _jax_peak_bytes
from train_throughput import _keras_model
from train_throughput import device_name
from train_throughput import make_sequences
from train_throughput import time_train_steps

PRECISIONS = {"bf16": None, "int8": "int8", "int4": "int4"}
REMATS = ("none", "block", "dots")
LORA_RANK = 4
# The targets: Gemma 2B at 4096 tokens with remat (< 16 GiB), Gemma 4 E4B at 1024 with int8/int4 (< 14 GiB),
# each beside the row it improves on.
DEFAULT_ROWS = (
    "gemma_2b:bf16:none:1024", "gemma_2b:bf16:none:4096", "gemma_2b:bf16:block:4096",
    "gemma4_e4b:bf16:none:1024", "gemma4_e4b:int8:none:1024", "gemma4_e4b:int4:none:1024",
)
SMOKE_ROWS = ("tiny:bf16:none:128", "tiny:int8:block:128", "tiny_gemma4:int4:dots:128")
OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def parse_row(name):
    """`(model, precision, remat, length)` of a row name.

    >>> parse_row("gemma_2b:int8:block:4096")
    ('gemma_2b', 'int8', 'block', 4096)
    """
    model, precision, remat, length = name.split(":")
    if model not in SHAPES or precision not in PRECISIONS or remat not in REMATS:
        raise argparse.ArgumentTypeError(
            f"{name}: expected MODEL:PRECISION:REMAT:LENGTH with MODEL in {sorted(SHAPES)}, "
            f"PRECISION in {sorted(PRECISIONS)}, REMAT in {REMATS}")
    return model, precision, remat, int(length)


def estimate_bytes(model, precision, remat, length, batch_size, devices=None):
    """The memory plan's per-device total for this row, on `devices` (default: the device at hand)."""
    from kerasgemma.distribution import detect_devices
    from kerasgemma.distribution.memory import memory_plan

    spec = SHAPES[model]
    architecture = "gemma" if spec["arch"] == "gemma2" else spec["arch"]
    plan = memory_plan(model, devices or detect_devices(), "bfloat16", PRECISIONS[precision], remat, batch_size,
                       length, LORA_RANK, backbone=(architecture, dict(spec["keras"])))
    return plan.total_bytes


def run_row(name, batch_size, steps, warmup, seed=0):
    """Train `warmup + steps` steps of one row; its tokens, seconds, loss and peak device memory."""
    import jax

    from kerasgemma.config import TrainConfig
    from kerasgemma.data import Batches, TokenizedExample
    from kerasgemma.distribution import on_host
    from kerasgemma.model import enable_lora
    from kerasgemma.quantization import quantize_base
    from kerasgemma.training import make_optimizer, make_train_step, stack_micro_batches

    model, precision, remat, length = parse_row(name)
    with on_host(log=lambda _: None):
        lm = _keras_model(model, "bfloat16")
        quantize_base(lm, PRECISIONS[precision])
        enable_lora(lm, LORA_RANK, targets="query,value")
        optimizer = make_optimizer(TrainConfig(learning_rate=5e-5, schedule="constant", max_grad_norm=None),
                                   steps + warmup, lm.trainable_variables)
    device = jax.local_devices()[0]
    state = jax.device_put(([v.value for v in lm.trainable_variables], [v.value for v in optimizer.variables]), device)
    frozen = jax.device_put([v.value for v in lm.non_trainable_variables], device)
    count = max(64, 3 * (steps + warmup) * batch_size * length // 180)
    sequences = make_sequences(count, SHAPES[model]["keras"]["vocabulary_size"], seed, max_length=length)
    batches = Batches([TokenizedExample(ids, mask) for ids, mask in sequences], batch_size, length)
    iterator = batches.epoch(0)
    plan = [stack_micro_batches([next(iterator)]) for _ in range(warmup + steps)]
    step = make_train_step(lm, optimizer, remat=remat)
    return dict(**time_train_steps(step, state, frozen, plan, warmup), steps=steps, peak_bytes=_jax_peak_bytes(), estimate_bytes=estimate_bytes(model, precision, remat, length,
                                                                            batch_size))


def format_table(rows, card, batch_size):
    header = ("model", "base", "remat", "tokens", "peak GiB", "plan GiB", "useful tok/s", "step ms", "compile s",
              "loss")
    lines = [f"card: {card}, batch {batch_size} row(s), LoRA rank {LORA_RANK} on query/value",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        model, precision, remat, length = parse_row(row["row"])
        head = f"| {model} | {precision} | {remat} | {length} |"
        if "error" in row:
            lines.append(f"{head} {row['error'][:60]} | | | | | |")
            continue
        peak = f"{row['peak_bytes'] / 2**30:.2f}" if row.get("peak_bytes") else "n/a"
        lines.append(f"{head} {peak} | {row['estimate_bytes'] / 2**30:.2f} | "
                     f"{row['useful_tokens'] / row['seconds']:,.0f} | {1000 * row['seconds'] / row['steps']:.0f} | "
                     f"{row['compile_seconds']:.1f} | {row['loss']:.3f} |")
    return "\n".join(lines)


def _child_error(done):
    text = done.stderr + done.stdout
    if any(marker in text for marker in OUT_OF_MEMORY):
        return "OOM"
    return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="MODEL:PRECISION:REMAT:LENGTH ...")
    parser.add_argument("--batch-size", type=int, default=1, help="Rows per step (default 1).")
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per row (default 4).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed first steps, compilation included.")
    parser.add_argument("--row-timeout", type=int, default=300, help="Seconds before a row is given up.")
    parser.add_argument("--out", help="Write the rows as JSON here (after every row).")
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes on CPU, in-process, seconds.")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in args.rows:
        parse_row(name)
    if args.one:
        try:
            row = run_row(args.one, args.batch_size, args.steps, args.warmup)
        except Exception as error:  # noqa: BLE001 (recorded, the driver goes on)
            if any(marker in str(error) for marker in OUT_OF_MEMORY):
                print(json.dumps({"error": "OOM", "peak_bytes": _jax_peak_bytes()}))
                return 0
            raise
        print(json.dumps(dict(row, device=device_name())))
        return 0
    if args.smoke:
        args.rows, args.steps = list(SMOKE_ROWS), 2
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3")
    rows = []
    for name in args.rows:
        row = {"row": name}
        if args.smoke:
            os.environ.setdefault("KERAS_BACKEND", "jax")
            row.update(run_row(name, args.batch_size, args.steps, args.warmup), device=device_name())
        else:
            command = [sys.executable, __file__, "--one", name, "--batch-size", str(args.batch_size),
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.row_timeout)
            except subprocess.TimeoutExpired:
                row["error"] = f"timeout after {args.row_timeout} s"
            else:
                lines = done.stdout.strip().splitlines()
                if done.returncode == 0 and lines:
                    row.update(json.loads(lines[-1]))
                else:
                    row["error"] = _child_error(done)
                    print(done.stderr[-2000:], file=sys.stderr)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            card = next((r["device"] for r in rows if r.get("device")), "unknown")
            with open(args.out + ".tmp", "w") as file:
                json.dump({"card": card, "date": time.strftime("%Y-%m-%d"), "batch_size": args.batch_size,
                           "rows": rows}, file, indent=2)
            os.replace(args.out + ".tmp", args.out)
    card = next((r["device"] for r in rows if r.get("device")), "unknown")
    print(format_table(rows, card, args.batch_size))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
