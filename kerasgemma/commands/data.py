"""`kerasgemma data`: load, validate, format and tokenize a dataset, and print its summary.

    kerasgemma data baike.jsonl
    kerasgemma data hc3_folder/ --subset law --on-error skip --json
    kerasgemma data hf://Hello-SimpleAI/HC3-Chinese --preset gemma3_instruct_1b

With `--json` the last line of output is one JSON object with every count.
"""

import argparse
import json
import sys

from kerasgemma.data.batching import MODES
from kerasgemma.data.chat_format import TEMPLATES
from kerasgemma.data.loading import HC3_SUBSETS, ON_ERROR_CHOICES, DataError
from kerasgemma.data.pipeline import prepare_data
from kerasgemma.data.rows import ANSWER_CHOICES
from kerasgemma.data.tokenize import LOSS_CHOICES, OVERFLOW_CHOICES


def add_parser(subparsers):
    """Add the `data` subcommand to an argparse `subparsers` object.

    Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> parser = add_parser(parser.add_subparsers())
    >>> parser.parse_args(["rows.jsonl", "--json"]).on_error
    'raise'
    """
    parser = subparsers.add_parser(
        "data",
        help="Check and summarize a training data set.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("path", help="A .jsonl/.json/.parquet file, a folder, or hf://OWNER/NAME.")
    add("--subset", default="baike", choices=HC3_SUBSETS, help="HC3 subset (default: baike).")
    add("--on-error", default="raise", choices=ON_ERROR_CHOICES,
        help="Stop at the first bad row (default), or skip and count bad rows.")
    add("--json", action="store_true", help="End the output with one JSON line of counts.")
    add("--preset", default=None,
        help="keras-hub preset whose tokenizer to use (default: a tiny test tokenizer).")
    add("--answers", default="first", choices=ANSWER_CHOICES)
    add("--include-chatgpt", action="store_true", help="Also train on ChatGPT answers.")
    add("--template", default="gemma", choices=TEMPLATES)
    add("--loss", default="completion", choices=LOSS_CHOICES)
    add("--overflow", default="truncate", choices=OVERFLOW_CHOICES)
    add("--sequence-length", type=int, default=512)
    add("--batch-size", type=int, default=8)
    add("--mode", default="pack", choices=MODES)
    add("--validation-fraction", type=float, default=0.05)
    add("--seed", type=int, default=0)
    parser.set_defaults(run=run)
    return parser


def run(args):
    """Run `kerasgemma data` with parsed arguments; returns the exit code."""
    tokenizer = load_tokenizer(args.preset)
    data = prepare_data(
            args.path,
            tokenizer,
            sequence_length=args.sequence_length,
            batch_size=args.batch_size,
            mode=args.mode,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            subset=args.subset,
            answers=args.answers,
            include_chatgpt=args.include_chatgpt,
            on_error=args.on_error,
            template=args.template,
            loss=args.loss,
            overflow=args.overflow,
            progress=sys.stderr.isatty(),
        )
    summary = data.summary()
    print(format_summary(summary))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
    return 0


def load_tokenizer(preset):
    """The tokenizer of a keras-hub preset, or the tiny test tokenizer's bytes."""
    if preset is None:
        from kerasgemma.tiny import build_tiny_tokenizer_proto

        return build_tiny_tokenizer_proto()
    import keras_hub

    from kerasgemma.model import preset_error

    try:
        return keras_hub.models.Tokenizer.from_preset(preset)
    except ValueError as error:
        raise preset_error(preset, error) from error


def format_summary(summary):
    """Human-readable lines of a `PreparedData.summary()`."""
    skipped = ", ".join(f"{kind} {count}" for kind, count in summary["skipped"].items())
    return "\n".join([
        f"files: {len(summary['files'])}  rows read: {summary['rows_read']}",
        f"skipped: {summary['skipped_total']} ({skipped or 'none'})  "
        f"duplicates removed: {summary['duplicates_removed']}",
        f"examples: {summary['examples']} (train {summary['train_examples']}, "
        f"validation {summary['validation_examples']})",
        f"tokens per example: p50 {summary['length_p50']:.0f}  p95 {summary['length_p95']:.0f}  "
        f"max {summary['length_max']}  "
        f"(truncated {summary['truncated']}, dropped {summary['dropped']})",
        f"batches: {summary['batches_per_epoch']} x {summary['batch_mode']} "
        f"{summary['batch_shapes']}  non-padding {summary['non_padding_fraction']:.1%} "
        f"(padding every example: {summary['non_padding_fraction_if_padded']:.1%})",
    ])
