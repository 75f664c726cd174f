"""`kerasgemma data`: load, validate, format and tokenize a dataset, and print its summary.

    kerasgemma data baike.jsonl
    kerasgemma data alpaca_zh.json                     # Alpaca, ShareGPT, prompt/completion, messages, HC3
    kerasgemma data qa.jsonl --columns question=prompt,answer=response
    kerasgemma data hub:shibing624/alpaca-zh@train     # any parquet/json Hub dataset, through `datasets`
    kerasgemma data hc3_folder/ --subset law --on-error skip --json
    kerasgemma data hf://Hello-SimpleAI/HC3-Chinese --preset gemma3_instruct_1b
    kerasgemma data --config run.yaml                  # exactly what `train` would read

The flags are `kerasgemma train`'s data settings, read and checked the same
way, through the same `kerasgemma.data.prepare_data`. With `--json` the last
line of output is one JSON object with every count.
"""

import argparse
import dataclasses
import json
import os
import sys

import kerasgemma as kg

from kerasgemma.commands.config_flags import add_config_arguments
from kerasgemma.commands.config_flags import config_from_args

# The settings that decide what the data stage produces.
DATA_FIELDS = (
    "preset", "format", "columns", "split", "subset", "answers", "include_chatgpt", "on_error", "template", "loss", "overflow",
    "batching", "sequence_length", "batch_size", "validation_fraction", "seed",
)
# Without --preset the counts come from a small Gemma-like test tokenizer:
# instant and offline, but token lengths are then only indicative.
DATA_BASE_CONFIG = kg.TrainConfig(preset="tiny:gemma")


def add_parser(subparsers):
    """Add the `data` subcommand to an argparse `subparsers` object.

    Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> parser = add_parser(parser.add_subparsers())
    >>> args = parser.parse_args(["rows.jsonl", "--on-error", "skip", "--json"])
    >>> config = config_from_args(args, base=DATA_BASE_CONFIG)
    >>> args.path, config.on_error, config.batch_size, args.json
    ('rows.jsonl', 'skip', 4, True)
    """
    parser = subparsers.add_parser(
        "data",
        help="Check and summarize a training data set.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", nargs="?", help="A .jsonl/.json/.csv/.parquet file, a folder, \"hub\", "
                        "hf://OWNER/NAME or hub:OWNER/NAME[:CONFIG][@SPLIT] (default: the config's `data`).")
    add_config_arguments(parser, base=DATA_BASE_CONFIG, fields=DATA_FIELDS)
    parser.add_argument("--json", action="store_true", help="End the output with one JSON line of counts.")
    parser.set_defaults(run=run)
    return parser


def run(args):
    """Run `kerasgemma data` with parsed arguments; returns the exit code."""
    config = config_from_args(args, base=DATA_BASE_CONFIG)
    if args.path:
        config = dataclasses.replace(config, data=args.path)
    summary = kg.prepare_data(config, progress=sys.stderr.isatty()).summary()
    print(format_summary(summary, detected=config.format == "auto"))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
    return 0


def format_summary(summary, detected=True):
    """Human-readable lines of a `PreparedData.summary()` (`detected`: the form was not set with --format)."""
    skipped = ", ".join(f"{kind} {count}" for kind, count in summary["skipped"].items())
    return "\n".join([
        f"format: {describe_formats(summary['formats'])} ({'detected' if detected else 'set by --format'})",
        f"files: {len(summary['files'])}  rows read: {summary['rows_read']}",
        f"skipped: {summary['skipped_total']} ({skipped or 'none'})  "
        f"duplicates removed: {summary['duplicates_removed']}",
        f"examples: {summary['examples']} (train {summary['train_examples']}, "
        f"validation {summary['validation_examples']})",
        f"tokens per example: p50 {summary['length_p50']:.0f}  p95 {summary['length_p95']:.0f}  "
        f"max {summary['length_max']}  "
        f"(truncated {summary['truncated']}, dropped {summary['dropped']})",
        f"batches: {summary['batches_per_epoch']} x {summary['batching']} "
        f"{summary['batch_shapes']}  non-padding {summary['non_padding_fraction']:.1%} "
        f"(padding every example: {summary['non_padding_fraction_if_padded']:.1%})",
    ])


def describe_formats(formats):
    """The row form(s) of a `LoadReport.formats`, in one phrase.

    Example:
    >>> describe_formats({"a.jsonl": "alpaca", "b.jsonl": "alpaca"})
    'alpaca'
    >>> describe_formats({"a.jsonl": "alpaca", "dir/b.parquet": "hc3"})
    'alpaca (a.jsonl), hc3 (b.parquet)'
    """
    forms = sorted(set(formats.values()))
    if len(forms) <= 1:
        return forms[0] if forms else "none"
    return ", ".join(f"{form} ({os.path.basename(name)})" for name, form in formats.items())
