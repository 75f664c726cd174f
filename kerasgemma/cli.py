"""`kerasgemma` command line: each subcommand parses its flags and calls the package.

Examples:
    kerasgemma demo                       # fine-tune + export + verify, offline
    kerasgemma data my.jsonl --json       # validate and summarise a data file
    kerasgemma train --config run.yaml --lr 1e-4
    kerasgemma resume runs/20261128-101500
    kerasgemma offline-model              # build the bundled Gemma 3 270M preset
    kerasgemma export RUN_OR_PRESET OUT   # Hugging Face folder + PEFT adapter
"""

import argparse
import importlib

# Modules that each provide `add_parser(subparsers)` and `run(args) -> int`
# (`run_<name>(args)` per subcommand when they add several).
COMMAND_MODULES = (
    "kerasgemma.demo",
    "kerasgemma.data.command",
    "kerasgemma.train.command",
    "kerasgemma.offline.command",
    "kerasgemma.export.command",
)


def make_parser():
    parser = argparse.ArgumentParser(
        prog="kerasgemma",
        description="LoRA fine-tuning of Gemma in Keras (JAX) with verified Hugging Face export.",
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        before = set(subparsers.choices)
        module.add_parser(subparsers)
        added = set(subparsers.choices) - before
        for name in added:
            # A module with one subcommand runs it with `run`; one with several
            # (train and resume) has `run_<name>` for each.
            handler = module.run if len(added) == 1 else getattr(module, f"run_{name.replace('-', '_')}")
            subparsers.choices[name].set_defaults(run=handler)
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
