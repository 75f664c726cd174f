"""Peak host memory of `export_merged` on a Gemma 2B-shape model, against the model's size.

Builds a Gemma 2B-shape `GemmaCausalLM` (vocabulary 256000, 18 layers, 8 query
heads, 1 KV head, hidden 2048, MLP 32768, head_dim 256) with random bfloat16
weights and LoRA rank 4 on query/value, in a child process, then exports it
merged in bfloat16 and prints a table. Export needs a tokenizer for its files
and special ids; a tiny Gemma-like one stands in (its size is negligible).

    python bench/export_memory.py                       # ~5 GB model, needs ~12 GB free RAM and ~5 GB disk
    python bench/export_memory.py --max-shard-size 1GB --json
    python bench/export_memory.py --tiny                # a tiny model, seconds (smoke test)

Peak RSS is read twice: `ru_maxrss` (whole child, build included) and the
kernel's VmHWM reset right before the export (`/proc/self/clear_refs`), which
is the export's own peak.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

GEMMA_2B_SHAPE = dict(
    vocabulary_size=256000,
    num_layers=18,
    num_query_heads=8,
    num_key_value_heads=1,
    hidden_dim=2048,
    intermediate_dim=32768,
    head_dim=256,
)
TINY_SHAPE = dict(GEMMA_2B_SHAPE, vocabulary_size=600, num_layers=2, hidden_dim=64, intermediate_dim=128,
                  head_dim=16)
GIB = 2**30


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure(shape, max_shard_size, output_dir):
    """Build, export and measure in this process; returns a dict of bytes."""
    import resource

    import keras
    import keras_hub
    import numpy as np

    from kerasgemma.export import export_merged
    from kerasgemma.model import enable_lora
    from kerasgemma.tiny import build_tiny_tokenizer_proto

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GemmaBackbone(**shape, dtype="bfloat16")
    tokenizer = keras_hub.models.GemmaTokenizer(proto=build_tiny_tokenizer_proto())
    causal_lm = keras_hub.models.GemmaCausalLM(
        backbone=backbone, preprocessor=keras_hub.models.GemmaCausalLMPreprocessor(tokenizer)
    )
    enable_lora(causal_lm, rank=4, targets=["query", "value"])
    model_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in causal_lm.weights)
    rss_after_build = _status_kib("VmRSS") * 1024
    maxrss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM: from here it is the export's peak
    folder = export_merged(causal_lm, output_dir, dtype="bfloat16", max_shard_size=max_shard_size)
    folder_bytes = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    return {
        "model_bytes": model_bytes,
        "folder_bytes": folder_bytes,
        "max_shard_size": max_shard_size,
        "rss_after_build": rss_after_build,
        "peak_rss_build": maxrss_build,
        "peak_rss_export": _status_kib("VmHWM") * 1024,
        "ru_maxrss_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-shard-size", default="2GB", help="Shard size passed to export_merged (default 2GB).")
    parser.add_argument("--tiny", action="store_true", help="A tiny model instead of the 2B shape (smoke test).")
    parser.add_argument("--json", action="store_true", help="Print the figures as one JSON line too.")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # output folder; run the measurement here
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.child:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        print(json.dumps(measure(TINY_SHAPE if args.tiny else GEMMA_2B_SHAPE, args.max_shard_size, args.child)))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, os.path.abspath(__file__), "--child", os.path.join(scratch, "hf"),
                   "--max-shard-size", args.max_shard_size] + (["--tiny"] if args.tiny else [])
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    overhead = figures["peak_rss_export"] - figures["rss_after_build"]
    rows = [
        ("model bytes (weights incl. LoRA)", figures["model_bytes"]),
        ("exported folder", figures["folder_bytes"]),
        (f"shard size ({figures['max_shard_size']})", None),
        ("RSS after build", figures["rss_after_build"]),
        ("peak RSS during build (ru_maxrss)", figures["peak_rss_build"]),
        ("peak RSS during export (VmHWM)", figures["peak_rss_export"]),
        ("export overhead (peak - after build)", overhead),
    ]
    print(f"{'':40s} {'GiB':>8s} {'x model':>8s}")
    for label, value in rows:
        if value is None:
            print(label)
        else:
            print(f"{label:40s} {value / GIB:8.2f} {value / figures['model_bytes']:8.2f}")
    if args.json:
        print(json.dumps(dict(figures, export_overhead=overhead)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
