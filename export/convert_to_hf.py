"""Convert a saved Keras Gemma checkpoint to a verified Hugging Face folder, and push it.

Thin wrapper over `kerasgemma.export` (the same flags as `kerasgemma export`):

    # A training run folder (lora.json + adapter.lora.h5): merged bfloat16 folder, verified
    python export/convert_to_hf.py runs/20261128-101500 out/gemma-zh

    # Base preset + LoRA file; PEFT adapter only, named after the official base
    python export/convert_to_hf.py gemma_2b_en out/adapter --lora adapter.lora.h5 \\
        --lora-rank 4 --lora-alpha 4 --lora-targets query,value --adapter-only --base-model google/gemma-2b

    # Base preset + full weights, 1 GB shards, pushed to a private repo (token from HF_TOKEN / hf auth login)
    python export/convert_to_hf.py my_preset_dir out/hf --weights finetuned.weights.h5 \\
        --max-shard-size 1GB --push me/gemma-2b-zh

    # A GGUF (Q8_0) + Ollama Modelfile for llama.cpp / Ollama, read back and verified
    python export/convert_to_hf.py runs/20261128-101500 out/gguf --format gguf --gguf-type q8_0

    # Try it in seconds on a tiny random model
    python export/convert_to_hf.py tiny:gemma3 /tmp/hf --dtype float32

Exits 1 when verification fails (nothing is pushed then, unless --force-push), 2 on a
mistake in the input (one line; --debug for the traceback).
"""

import argparse
import os
import sys

# Also runs from a clone without `pip install -e .`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kerasgemma.cli import run_command  # noqa: E402
from kerasgemma.commands.export import add_export_arguments  # noqa: E402
from kerasgemma.commands.export import run  # noqa: E402


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of any error.")
    add_export_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def main(argv=None):
    return run_command(make_parser().parse_args(argv), "convert_to_hf.py")


if __name__ == "__main__":
    raise SystemExit(main())
