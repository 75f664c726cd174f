"""`kerasgemma` command line: each subcommand parses its flags and calls the package.

Examples:
    kerasgemma demo                       # fine-tune + export + verify, offline
    kerasgemma data my.jsonl --json       # validate and summarise a data file
    kerasgemma train --config run.yaml --lr 1e-4
    kerasgemma resume runs/20261128-101500
    kerasgemma offline-model              # build the bundled Gemma 3 270M preset
    kerasgemma export RUN_OR_PRESET OUT   # Hugging Face folder + PEFT adapter
    kerasgemma plan --preset gemma_2b_en --device t4   # memory per device, a setting that fits

A mistake in the input (a bad setting, a missing file, a bad data row) is
printed as one line and exits with status 2; `--debug` shows the traceback.
"""

import argparse
import sys

from kerasgemma.commands import data as data_command
from kerasgemma.commands import demo as demo_command
from kerasgemma.commands import export as export_command
from kerasgemma.commands import offline_model as offline_model_command
from kerasgemma.commands import plan as plan_command
from kerasgemma.commands import train as train_command
from kerasgemma.errors import EXIT_USER_ERROR
from kerasgemma.errors import UserError
from kerasgemma.training.loop import TrainingDiverged
from kerasgemma.training.loop import TrainingInterrupted

COMMANDS = (demo_command, data_command, train_command, offline_model_command, export_command, plan_command)


def make_parser():
    """The `kerasgemma` parser with every subcommand registered.

    Example:
    >>> args = make_parser().parse_args(["resume", "runs/x"])
    >>> args.command, args.run.__name__
    ('resume', 'run_resume')
    """
    parser = argparse.ArgumentParser(
        prog="kerasgemma",
        description="LoRA fine-tuning of Gemma in Keras (JAX) with verified Hugging Face export.",
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of any error.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def run_command(args, name):
    """Call `args.run(args)` and turn the expected failures into messages and exit codes.

    A `UserError` is one line on stderr and exit code 2; a diverged run says
    where its last good checkpoint is (1); an interrupted one where it was
    saved and how to continue (128 + the signal, as a shell reports a
    process the signal killed). `args.debug` (`--debug`) lets the traceback
    through instead. Shared by `kerasgemma` and `export/convert_to_hf.py`.
    """
    try:
        return args.run(args)
    except TrainingDiverged as error:
        if args.debug:
            raise
        print(f"{name}: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as error:
        if args.debug:
            raise
        run_dir = error.checkpoint.parent.parent
        print(f"{name}: {error}\ncontinue with: kerasgemma resume {run_dir}", file=sys.stderr)
        return 128 + error.signum
    except UserError as error:
        if args.debug:
            raise
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def main(argv=None):
    """Parse `argv`, run the subcommand, return its exit code (2 for a user error)."""
    args = make_parser().parse_args(argv)
    return run_command(args, f"kerasgemma {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
