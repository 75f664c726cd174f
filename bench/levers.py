"""One lever at a time: variants of the kerasgemma step, timed on the same batches, plus a kernel profile.

Each variant runs in its own process (its own XLA flags and peak memory) on
the Gemma 2B shape of `train_throughput.py`. `--profile [VARIANT]` also
traces a few steps of one variant with `jax.profiler` and prints where the
device time goes: by kernel, by kind (matmul, attention, other fusions), by
part of the step (loss, optimizer, attention, decoder blocks) and the time no
kernel runs, split by the kernel that ran next (what the device waited for).

    python bench/levers.py --variants default batch16 no_triton_gemm --profile --out bench/results/levers.json
    python bench/levers.py --variants default no_command_buffers --profile no_command_buffers   # parts named
    python bench/levers.py --smoke          # tiny shapes on CPU, seconds
    python bench/levers.py --variants default lora_merged --model gemma_2b_2layers --compile-only   # CPU is fine

`--compile-only` times nothing: it compiles each variant's step and reports
XLA's own figures for it (FLOPs from `cost_analysis`, temporary bytes from
`memory_analysis`), so a lever's saved work and memory show on a CPU too.

Notes on each lever (prediction, result) live in bench/NOTES.md.
"""

import argparse
import collections
import contextlib
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import train_throughput as tt  # noqa: E402

# Gemma 2B's projections with 2 of its 18 layers and a 32k vocabulary: compiles on a CPU in a minute or
# two; the per-layer difference between two variants times 18 is the full model's.
tt.SHAPES["gemma_2b_2layers"] = dict(arch="gemma", keras=dict(tt.SHAPES["gemma_2b"]["keras"], num_layers=2,
                                                               vocabulary_size=32768))

# name -> (extra XLA flags, keyword arguments of the step set-up, description)
VARIANTS = {
    "default": ("", {}, "kerasgemma defaults (packed, bf16, fused sliced loss on the loss-carrying tokens, the attention "
                        "kernel 'auto' picks: flash on a Hopper GPU, Splash on a TPU, cuDNN with the segment mask and "
                        "is_causal on other GPUs)"),
    "loss_every_token": ("", {"loss_every_token": True},
                         "the fused loss projects every token onto the vocabulary, prompt tokens too (the default "
                         "until 2026-11-30)"),
    "causal_only": ("", {"causal_only": True}, "measurement only: keras-hub's causal mask, no segment mask"),
    "no_causal_hint": ("", {"no_causal_hint": True},
                       "the segment mask alone, without is_causal=True: cuDNN computes every block"),
    "dense_attention": ("", {"attention_kernel": "dense"},
                        "keras-hub's attention with the segment mask (cuDNN with is_causal on a GPU, XLA's masked "
                        "computation on a TPU) instead of the kernel 'auto' picks (Splash on a TPU, flash on a Hopper "
                        "GPU; elsewhere the default)"),
    "flash_attention": ("", {"attention_kernel": "flash"},
                        "the Pallas Triton flash kernel: skips key blocks outside each query's example, soft-cap "
                        "and windows in the kernel (the default on a Hopper GPU)"),
    "flash_attention_remat_dots": ("", {"attention_kernel": "flash", "remat": "dots"},
                                   "flash_attention with remat 'dots' (projections' and the flash kernel's outputs kept)"),
    "remat_dots": ("", {"remat": "dots"},
                   "remat 'dots': each block keeps its projections' and fused attention's outputs (cuDNN's or the flash "
                   "kernel's), recomputes the rest"),
    "remat_dots_projections": ("", {"remat": "dots", "dots_policy": "dots_with_no_batch_dims_saveable"},
                               "measurement only: remat 'dots' keeping the projections' outputs alone (the cuDNN "
                               "attention forward runs again in the backward pass; 'dots' until 2026-11-30)"),
    "remat_dots_all": ("", {"remat": "dots", "dots_policy": "dots_saveable"},
                       "measurement only: remat 'dots' keeping every matmul's output, XLA's dense attention scores "
                       "included (jax's dots_saveable, the first 'dots')"),
    "remat_block": ("", {"remat": "block"}, "remat 'block': each block keeps only its input"),
    "loss_chunk_512": ("", {"loss_chunk_tokens": 512},
                       "fused-loss slices of 512 tokens instead of 1024: finer steps past the last loss-carrying token"),
    "no_command_buffers": ("--xla_gpu_enable_command_buffer=", {},
                           "XLA: no CUDA graphs, every kernel launched on its own (a profile then names each "
                           "kernel's JAX op)"),
    "control_flow_in_graphs": ("--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL", {},
                               "XLA: loops and conditionals inside the CUDA graphs too (the loss's loop then runs "
                               "without the host reading its condition each slice)"),
    "concurrent_graphs": ("--xla_gpu_command_buffer_scheduling_mode=CONCURRENT", {},
                          "XLA: CUDA graphs built as a dependency graph, so independent kernels (an elementwise "
                          "fusion beside a GEMM) may run at the same time"),
    "cublaslt_epilogues": ("--xla_gpu_enable_cublaslt=true", {},
                           "XLA: GEMMs through cuBLASLt, which can fuse the GeLU (and its saved input) into the "
                           "gate projection's epilogue"),
    "latency_hiding": ("--xla_gpu_enable_latency_hiding_scheduler=true", {},
                       "XLA: the latency-hiding scheduler orders the step's kernels"),
    "batch16": ("", {"batch_size": 16}, "16 packed rows per step instead of 8"),
    "no_triton_gemm": ("--xla_gpu_enable_triton_gemm=false", {}, "XLA: cuBLAS for every matmul, no Triton GEMM fusions"),
    "reference_loss": ("", {"fused_loss": False}, "full float32 logits instead of the fused sliced loss"),
    "lora_merged": ("", {"lora_path": "merged"},
                    "Keras' merged LoRA x(W + s AB): a merged kernel and its full weight gradient per q/v projection"),
    "lora_all": ("", {"lora_targets": "all"}, "LoRA on all 7 projections, beside the kernel (default path)"),
    "lora_all_merged": ("", {"lora_targets": "all", "lora_path": "merged"},
                        "LoRA on all 7 projections, Keras' merged path"),
}


def kernel_kind(name):
    lowered = name.lower()
    if any(key in lowered for key in ("cudnn", "fmha", "flash", "attn", "splash")):
        return "attention"
    if any(key in lowered for key in ("gemm", "nvjet", "cutlass", "xmma", "cublas", "dot")):
        return "matmul"
    if "memcpy" in lowered or "memset" in lowered:
        return "copy"
    return "other fusion"


def hlo_op_names(hlo_text):
    """Each HLO instruction's JAX op name (its name stack), keyed as a trace names the instruction's kernel.

    Example:
    >>> hlo_op_names('%loop_add_fusion.17 = f32[2] fusion(%p), metadata={op_name="jit(step)/fused_cross_entropy/add"}')
    {'loop_add_fusion_17': 'jit(step)/fused_cross_entropy/add'}
    """
    pattern = re.compile(r'%?([\w.-]+) = [^\n]*?op_name="([^"]+)"')
    return {trace_name(match.group(1)): match.group(2) for match in pattern.finditer(hlo_text)}


def trace_name(name):
    return re.sub(r"[.-]", "_", name)


def short_op(op_name):
    """The last three levels of a JAX op name, at most 80 characters."""
    return "/".join(op_name.split("/")[-3:])[:80]


def part_of(kernel, op_name):
    """Which part of the step a kernel belongs to: the named scopes of kerasgemma's loss and optimizer, attention
    kernels by name, the rest the decoder blocks (projections, norms, activations, embedding)."""
    if "fused_cross_entropy" in op_name:
        return "loss"
    if "optimizer" in op_name:
        return "optimizer"
    if kernel_kind(kernel) == "attention":
        return "attention"
    return "decoder blocks"


def idle_time(intervals):
    """Time within the span of `intervals` ((start, duration, label) triples) when none of them runs, in all and by
    the label of the interval that ends each gap (what the device was waiting to start).

    Example:
    >>> idle_time([(0, 5, "a"), (3, 4, "b"), (10, 2, "c"), (13, 1, "c")])
    (4, Counter({'c': 4}))
    """
    gaps, end = collections.Counter(), None
    for start, duration, label in sorted(intervals):
        if end is not None and start > end:
            gaps[label] += start - end
        end = start + duration if end is None else max(end, start + duration)
    return sum(gaps.values()), gaps


def summarize_trace(trace_dir, steps, top=30, op_names=None):
    """Device time per kernel, per kind and per part of the step, and idle time, from a `jax.profiler` trace.

    `op_names` (`hlo_op_names` of the compiled step) attributes each kernel to its JAX op.
    """
    op_names = op_names or {}
    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    paths += glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        return "no trace file found under " + trace_dir
    with gzip.open(paths[0]) as file:
        events = json.load(file)
    events = events["traceEvents"] if isinstance(events, dict) else events
    process_names = {e["pid"]: e["args"].get("name", "") for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in process_names.items() if "GPU" in name or "gpu" in name or "TPU" in name}
    by_name, by_part, intervals, op_of, named = collections.Counter(), collections.Counter(), [], {}, 0
    for event in events:
        if event.get("ph") == "X" and event.get("pid") in device_pids and "dur" in event:
            name = event["name"]
            by_name[name] += event["dur"]
            args = event.get("args", {})
            op_name = op_names.get(trace_name(str(args.get("hlo_op", name)))) or args.get("name", "")
            named += bool(op_name)
            op_of.setdefault(name, op_name)  # for the listing: the first op a kernel ran for
            part = part_of(name, op_name)
            by_part[part] += event["dur"]
            intervals.append((event["ts"], event["dur"], f"[{part}] {short_op(op_name) or name}"))
    total = sum(by_name.values())
    if not total:
        return "no device events in the trace (processes: %s)" % sorted(set(process_names.values()))
    by_kind = collections.Counter()
    for name, micros in by_name.items():
        by_kind[kernel_kind(name)] += micros
    idle, gaps = idle_time(intervals)
    lines = [f"device time per step: {total / steps / 1000:.1f} ms (sum over kernels, {len(by_name)} distinct); "
             f"no kernel running: {idle / steps / 1000:.1f} ms"]
    lines += [f"  {kind:<14} {micros / steps / 1000:8.1f} ms  {100 * micros / total:5.1f}%" for kind, micros in by_kind.most_common()]
    if op_names:
        lines.append(f"per part of the step ({named} of {len(intervals)} kernel runs traced to a JAX op):")
        lines += [f"  {part:<14} {micros / steps / 1000:8.1f} ms  {100 * micros / total:5.1f}%" for part, micros in by_part.most_common()]
    lines.append("no kernel running, by the kernel that ran next (ms per step):")
    lines += [f"  {micros / steps / 1000:8.2f}  {label[:100]}" for label, micros in gaps.most_common(8)]
    lines.append(f"top {top} kernels (ms per step, share, part, JAX op):")
    lines += [f"  {micros / steps / 1000:8.2f}  {100 * micros / total:5.1f}%  {name[:60]}  "
              f"[{part_of(name, op_of[name])}] {short_op(op_of[name])}"
              for name, micros in by_name.most_common(top)]
    return "\n".join(lines)


def apply_lever_options(options):
    """Install the attention and remat-policy levers of `options` (popped) in this process: one variant per process."""
    import kerasgemma.attention
    import kerasgemma.forward

    if options.pop("causal_only", False):
        kerasgemma.forward.packed_attention = lambda backbone, segment_ids: contextlib.nullcontext()
    if options.pop("no_causal_hint", False):
        kerasgemma.attention.causal_attention_op = contextlib.nullcontext
    if options.pop("loss_every_token", False):
        fused = kerasgemma.forward.fused_cross_entropy

        def every_token(hidden, matrix, target_ids, loss_mask, *rest):
            return fused(hidden, matrix, target_ids, loss_mask | True, *rest)

        kerasgemma.forward.fused_cross_entropy = every_token
    if "loss_chunk_tokens" in options:
        kerasgemma.forward.LOSS_CHUNK_TOKENS = options.pop("loss_chunk_tokens")
    if "dots_policy" in options:
        import jax

        import kerasgemma.remat

        name = options.pop("dots_policy")
        policy = getattr(jax.checkpoint_policies, name, None) or getattr(kerasgemma.remat, name)
        kerasgemma.remat.REMAT_POLICIES["dots"] = policy
    if "attention_kernel" in options:
        kernel = options.pop("attention_kernel")
        kerasgemma.attention.auto_kernel = lambda backbone: kernel
    return options


def compile_variant(name, shape, dtype="bfloat16"):
    """XLA's figures for one variant's compiled step, without running it: FLOPs and bytes."""
    options = apply_lever_options(dict(VARIANTS[name][1]))
    import jax

    sequences = tt.make_sequences(400, tt.SHAPES[shape]["keras"]["vocabulary_size"], 0)
    _, step, state, frozen, plan = tt.kerasgemma_setup(shape, sequences, 1, 0, dtype=dtype, **options)
    compiled = step.lower(state, frozen, plan[0]).compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return dict(device=jax.devices()[0].device_kind, dtype=dtype, flops=float(cost.get("flops", 0.0)),
                temp_bytes=int(memory.temp_size_in_bytes), argument_bytes=int(memory.argument_size_in_bytes),
                output_bytes=int(memory.output_size_in_bytes))


def run_variant(name, shape, steps, warmup, profile_dir=None, batch_size=tt.BATCH_SIZE, profile_steps=3,
                sequence_length=tt.SEQUENCE_LENGTH):
    options = apply_lever_options(dict({"batch_size": batch_size, "sequence_length": sequence_length},
                                       **VARIANTS[name][1]))
    import jax

    sequences = tt.make_sequences(4000, tt.SHAPES[shape]["keras"]["vocabulary_size"], 0,
                                  min(tt.SEQUENCE_LENGTH, sequence_length))
    row = tt.arm_kerasgemma(shape, sequences, steps, warmup, **options)
    row["useful_tokens_per_second"] = row["useful_tokens"] / row["seconds"]
    row["device"] = jax.devices()[0].device_kind
    if profile_dir:
        _, step, state, frozen, plan = tt.kerasgemma_setup(shape, sequences, profile_steps, 1, **options)
        state, loss, _ = step(state, frozen, plan[0])
        float(loss)
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            for batch in plan[1:]:
                state, loss, _ = step(state, frozen, batch)
            float(loss)
        op_names = hlo_op_names(step.lower(state, frozen, plan[0]).compile().as_text())
        row["profile"] = summarize_trace(profile_dir, profile_steps, op_names=op_names)
    return row


def print_compiled_table(rows, base):
    print("| variant | GFLOP per step | temp MiB | vs default: GFLOP | vs default: temp MiB |\n|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['variant']} | failed: {row['error'][:80]} | | | |")
            continue
        flops, temp = row["flops"] / 1e9, row["temp_bytes"] / 2**20
        delta = (f"{flops - base['flops'] / 1e9:+,.1f} | {temp - base['temp_bytes'] / 2**20:+,.1f}" if base
                 else "n/a | n/a")
        print(f"| {row['variant']} | {flops:,.1f} | {temp:,.1f} | {delta} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument("--model", default="gemma_2b", choices=sorted(tt.SHAPES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", nargs="?", const="default", choices=sorted(VARIANTS), metavar="VARIANT",
                        help="Trace VARIANT (default: 'default') and print a kernel summary. Kernels XLA runs inside "
                             "CUDA graphs are traced as command buffers, not their JAX ops: profile "
                             "no_command_buffers to see each kernel's part of the step.")
    parser.add_argument("--out", help="Write the rows as JSON here.")
    parser.add_argument("--batch-size", type=int, default=tt.BATCH_SIZE, help="Packed rows per step (default 8).")
    parser.add_argument("--sequence-length", type=int, default=tt.SEQUENCE_LENGTH,
                        help="Tokens per packed row (default 1024; the same examples at any length).")
    parser.add_argument("--profile-steps", type=int, default=3, help="Steps traced by --profile (default 3).")
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny shapes on CPU, 2 rows, 1 warm-up + 1 step (1 traced), in seconds.")
    parser.add_argument("--compile-only", action="store_true",
                        help="Only compile each variant's step: XLA's FLOPs and temporary bytes, no timing.")
    parser.add_argument("--dtype", default="bfloat16", help="Base weight dtype for --compile-only.")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.steps, args.warmup, args.batch_size, args.profile_steps = "tiny", 1, 1, 2, 1
    if args.one and args.compile_only:
        print(json.dumps(compile_variant(args.one, args.model, args.dtype)))
        return 0
    if args.one:
        print(json.dumps(run_variant(args.one, args.model, args.steps, args.warmup, args.profile_dir, args.batch_size,
                                     args.profile_steps, args.sequence_length)))
        return 0
    from kerasgemma.atomic import write_json_atomic

    rows = []
    for name in args.variants:
        flags, _, description = VARIANTS[name]
        env = dict(os.environ, KERAS_BACKEND="jax", XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3")
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
        command = [sys.executable, __file__, "--one", name, "--model", args.model, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                   "--profile-steps", str(args.profile_steps), "--sequence-length", str(args.sequence_length)
                   ] + ["--compile-only", "--dtype", args.dtype] * args.compile_only
        if name == args.profile:
            command += ["--profile-dir", os.path.abspath(os.path.join(os.path.dirname(args.out or "."), "profile"))]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        row = {"variant": name, "description": description, "xla_flags": flags}
        if done.returncode == 0:
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            row["error"] = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(done.stderr[-3000:], file=sys.stderr)
        row["wall_seconds"] = time.perf_counter() - started
        if "profile" in row:
            print(row["profile"], flush=True)
            row["profile"] = row["profile"].splitlines()  # kept in the JSON, a line a string
        rows.append(row)
        print(json.dumps({key: value for key, value in row.items() if key != "profile"}), flush=True)
        if args.out:
            write_json_atomic(args.out, {"date": time.strftime("%Y-%m-%d"), "model": args.model,
                                         "sequence_length": args.sequence_length, "batch_size": args.batch_size,
                                         "rows": rows})
    base = next((r for r in rows if r["variant"] == "default" and "error" not in r), None)
    if args.compile_only:
        print_compiled_table(rows, base)
        return 0 if all("error" not in row for row in rows) else 1
    print(f"card: {tt.card_of(rows)}, model: {args.model}")
    print("| variant | useful tok/s | step ms | peak GiB | compile s | loss | vs default |\n|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['variant']} | failed: {row['error'][:80]} | | | | | |")
            continue
        ratio = f"{row['useful_tokens_per_second'] / base['useful_tokens_per_second']:.2f}x" if base else "n/a"
        peak = f"{row['peak_bytes'] / 2**30:.1f}" if row.get("peak_bytes") else "n/a"
        print(f"| {row['variant']} | {row['useful_tokens_per_second']:,.0f} | {1000 * row['seconds'] / row['steps']:.0f} | "
              f"{peak} | {row['compile_seconds']:.1f} | {row['loss']:.4f} | {ratio} |")
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
