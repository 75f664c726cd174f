"""`kerasgemma eval`: loss and perplexity of a trained run on a data file.

    kerasgemma eval runs/20261128-101500 test.jsonl
    kerasgemma eval runs/20261128-101500 qa.csv --columns question=prompt,answer=response --json
    kerasgemma eval runs/20261128-101500 hub:shibing624/alpaca-zh@train --on-error skip

FILE is read like `kerasgemma data` reads it (any format it detects; the
read flags below override the run's settings) and tokenized with the run's
template, tokenizer and sequence length. Every example is scored; the loss
is the mean cross-entropy over completion tokens (the model's answers), as
the training loop's validation loss. `--json` prints one JSON object instead
of the table.
"""

import argparse
import json

from kerasgemma.commands.config_flags import add_config_arguments
from kerasgemma.commands.config_flags import config_from_args
from kerasgemma.commands.loaded_run import add_run_argument
from kerasgemma.commands.loaded_run import load_run_to_stderr
from kerasgemma.evaluation import READ_SETTINGS
from kerasgemma.evaluation import evaluate_data


def add_parser(subparsers):
    """Register `eval` on an argparse `subparsers` object.

    Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> parser = add_parser(parser.add_subparsers())
    >>> args = parser.parse_args(["runs/x", "test.jsonl", "--on-error", "skip", "--json"])
    >>> args.run_dir, args.data, args.on_error, args.json
    ('runs/x', 'test.jsonl', 'skip', True)
    """
    parser = subparsers.add_parser(
        "eval",
        help="Loss and perplexity of a run on a data file.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_argument(parser)
    parser.add_argument("data", metavar="FILE", help="A .jsonl/.json/.csv/.parquet file, a folder, "
                        "hf://OWNER/NAME or hub:OWNER/NAME[:CONFIG][@SPLIT].")
    add_config_arguments(parser, fields=READ_SETTINGS)
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of the table.")
    parser.set_defaults(run=run)
    return parser


def run(args):
    """Run `kerasgemma eval` with parsed arguments; returns the exit code."""
    loaded = load_run_to_stderr(args.run_dir)
    settings = config_from_args(args, base=loaded.config)
    result = evaluate_data(loaded, args.data, **{name: getattr(settings, name) for name in READ_SETTINGS})
    result["run_dir"] = str(args.run_dir)
    print(json.dumps(result, ensure_ascii=False, sort_keys=True) if args.json else format_result(result))
    return 0


def format_result(result):
    """The human table of an `evaluate_data` result.

    Example:
    >>> print(format_result({"run_dir": "runs/x", "step": 20, "data": "t.jsonl", "examples": 11, "tokens": 390,
    ...                      "loss": 2.0, "perplexity": 7.389, "skipped": 0, "truncated": 1, "dropped": 0}))
    run         runs/x (step 20)
    data        t.jsonl
    examples    11 (skipped 0, truncated 1, dropped 0)
    tokens      390 completion tokens scored
    loss        2.0000
    perplexity  7.39
    """
    rows = [
        ("run", f"{result['run_dir']} (step {result['step']})"),
        ("data", result["data"]),
        ("examples", f"{result['examples']} (skipped {result['skipped']}, truncated {result['truncated']}, "
                     f"dropped {result['dropped']})"),
        ("tokens", f"{result['tokens']} completion tokens scored"),
        ("loss", f"{result['loss']:.4f}"),
        ("perplexity", f"{result['perplexity']:.2f}"),
    ]
    return "\n".join(f"{name:<12}{value}" for name, value in rows)
