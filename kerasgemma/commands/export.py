"""`kerasgemma export`: a saved Keras checkpoint -> verified Hugging Face folder (-> Hub).

    kerasgemma export runs/20261128-101500 out/hf                 # run folder, merged, bfloat16
    kerasgemma export runs/20261128-101500 out/adapter --adapter-only --base-model google/gemma-3-270m
    kerasgemma export gemma_2b_en out/hf --lora my.lora.h5 --lora-rank 4 --lora-alpha 8
    kerasgemma export my_preset_dir out/hf --weights finetuned.weights.h5 --max-shard-size 1GB
    kerasgemma export runs/20261128-101500 out/hf --push me/gemma-zh   # private repo
    kerasgemma export tiny:gemma3 /tmp/hf --dtype float32             # tiny random model, seconds

The folder is checked against the Keras model with transformers (and mlx-lm
when installed) unless `--no-verify`; a failed check exits 1 and is never
pushed unless `--force-push`. OUTPUT_DIR must be new, empty or an earlier
export (replaced atomically); any other folder needs `--overwrite`, and the
current folder or one holding SOURCE is always refused. A run that did not
finish is exported from its newest good checkpoint. The Hub token comes from
`HF_TOKEN` or `hf auth login`, is checked before any work when pushing, and is
never printed or written.
"""

import argparse

import kerasgemma as kg


DTYPES = ("bfloat16", "float16", "float32")


def add_export_arguments(parser):
    """Add the export flags to `parser` (shared by the CLI and `export/convert_to_hf.py`).

    Example:
    >>> parser = argparse.ArgumentParser()
    >>> _ = add_export_arguments(parser)
    >>> args = parser.parse_args(["runs/x", "out", "--adapter-only", "--push", "me/m"])
    >>> args.adapter_only, args.push, args.public, args.dtype
    (True, 'me/m', False, 'bfloat16')
    """
    add = parser.add_argument
    add("source", help="A run folder (lora.json + adapter.lora.h5), a keras-hub preset name or "
        "folder, hf://…, tiny:gemma3 or offline:gemma3_270m.")
    add("output_dir", help="Folder to write: new, empty, or an earlier kerasgemma export (replaced). "
        "Never the current folder or one holding SOURCE.")
    add("--overwrite", action="store_true", help="Replace OUTPUT_DIR even if it holds files no export wrote.")
    checkpoint = parser.add_argument_group("checkpoint")
    checkpoint.add_argument("--weights", help="A .weights.h5 (save_weights) loaded into SOURCE first.")
    checkpoint.add_argument("--lora", help="A .lora.h5 (save_lora_weights) applied to SOURCE. Its rank, "
                            "alpha and targets come from a lora.json beside it when present.")
    checkpoint.add_argument("--lora-rank", type=int, help="LoRA rank (default: lora.json, else the file's).")
    checkpoint.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: lora.json, else the rank).")
    checkpoint.add_argument("--lora-targets", help="Comma-separated LoRA layers (default: lora.json, "
                            "else query,value).")
    output = parser.add_argument_group("output")
    output.add_argument("--adapter-only", action="store_true",
                        help="Write a PEFT LoRA adapter instead of a merged model.")
    output.add_argument("--base-model", help="Base model the adapter names in adapter_config.json and "
                        "the model card, e.g. google/gemma-2b (default: the preset's Hugging Face repo where known, "
                        "e.g. gemma_2b_en -> google/gemma-2b, else the preset).")
    output.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                        help="Merged weight dtype (default bfloat16; adapters stay float32).")
    output.add_argument("--max-shard-size", default="2GB", help="Largest safetensors file (default 2GB).")
    check = parser.add_argument_group("verification")
    check.add_argument("--no-verify", action="store_true", help="Skip the transformers/mlx-lm check.")
    check.add_argument("--max-new-tokens", type=int, default=16, help="Greedy tokens compared (default 16).")
    check.add_argument("--atol", type=float, default=1e-3, help="Max |Δlogits| allowed (default 1e-3).")
    check.add_argument("--no-mlx", action="store_true", help="Skip the mlx-lm check.")
    hub = parser.add_argument_group("hub")
    hub.add_argument("--push", metavar="REPO_ID", help="Push the folder to this Hub repo (private by default).")
    hub.add_argument("--public", action="store_true", help="Create the repo public.")
    hub.add_argument("--force-push", action="store_true", help="Push even if verification failed or was skipped.")
    hub.add_argument("--hub-endpoint", help="Hub URL (default: huggingface_hub's, HF_ENDPOINT).")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    return parser


def add_parser(subparsers):
    """Register `kerasgemma export` on an argparse `subparsers` object."""
    parser = subparsers.add_parser(
        "export",
        help="Export a Keras checkpoint to a verified Hugging Face folder, optionally push it.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_export_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def run(args, log=print):
    """Run an export from parsed arguments; returns the exit code (1 if verification failed)."""
    done = kg.convert(
        args.source, args.output_dir, lora=args.lora, weights=args.weights, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, lora_targets=args.lora_targets, adapter_only=args.adapter_only,
        base_model=args.base_model, overwrite=args.overwrite, push=args.push, public=args.public,
        force_push=args.force_push, hub_endpoint=args.hub_endpoint, log=log, dtype=args.dtype,
        max_shard_size=args.max_shard_size, verify=not args.no_verify, max_new_tokens=args.max_new_tokens,
        atol=args.atol, check_mlx=not args.no_mlx, progress=not args.no_progress,
    )
    log(done.folder)
    if done.url:
        log(f"pushed to {done.url}")
    return 0 if done.passed else 1
