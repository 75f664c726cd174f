"""`kerasgemma train` and `kerasgemma resume`: start or continue a run, print its folder.

    kerasgemma train --preset gemma_2b_en --data baike.jsonl --max-steps 500 --save-every 50
    kerasgemma train --config run.yaml --lr 1e-4      # the file, then flags on top
    kerasgemma resume runs/20261128-101500            # after a crash, Ctrl-C or kill -9
"""

import sys

from kerasgemma.commands.config_flags import add_config_arguments
from kerasgemma.commands.config_flags import config_from_args
from kerasgemma.run import resume
from kerasgemma.run import train
from kerasgemma.training.loop import TrainingDiverged
from kerasgemma.training.loop import TrainingInterrupted


def add_parser(subparsers):
    """Register `train` and `resume` on an argparse `subparsers` object."""
    train_parser = subparsers.add_parser(
        "train",
        help="Fine-tune with LoRA; prints the run folder as the last line.",
        description="Fine-tune a Gemma preset with LoRA. Settings come from the defaults, then "
        "--config FILE (YAML/JSON), then flags. Example: kerasgemma train --config run.yaml --lr 1e-4",
    )
    add_config_arguments(train_parser)
    train_parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    train_parser.set_defaults(run=run_train)
    resume_parser = subparsers.add_parser(
        "resume",
        help="Continue a run from its newest checkpoint; prints the run folder.",
        description="Continue a killed or finished run from its newest complete checkpoint, "
        "with the config saved in the run folder.",
    )
    resume_parser.add_argument("run_dir", help="The run folder printed by `kerasgemma train`.")
    resume_parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    resume_parser.set_defaults(run=run_resume)


def report_run(run):
    """Print a finished run's losses and numbers; its folder is the last line."""
    summary = run.summary
    if summary.get("initial_val_loss") is not None:
        print(f"validation loss: {summary['initial_val_loss']:.4f} -> {summary['val_loss']:.4f}")
    print(f"steps: {summary['step']}, tokens: {summary['tokens']}, seconds: {summary['seconds']:.1f}")
    print(run.run_dir)
    return 0


def _diverged(command, error):
    # Divergence is an expected failure with a message that says what to do.
    print(f"kerasgemma {command}: {error}", file=sys.stderr)
    return 1


def report_interrupted(command, error):
    """Print where an interrupted run was saved and how to continue; return 128 + the signal.

    128 + the signal number is how a shell reports a process the signal killed.
    """
    run_dir = error.checkpoint.parent.parent
    print(f"kerasgemma {command}: {error}\ncontinue with: kerasgemma resume {run_dir}", file=sys.stderr)
    return 128 + error.signum


def run_train(args):
    config = config_from_args(args)
    try:
        return report_run(train(config, progress=not args.no_progress))
    except TrainingDiverged as error:
        return _diverged("train", error)
    except TrainingInterrupted as error:
        return report_interrupted("train", error)


def run_resume(args):
    try:
        return report_run(resume(args.run_dir, progress=not args.no_progress))
    except TrainingDiverged as error:
        return _diverged("resume", error)
    except TrainingInterrupted as error:
        return report_interrupted("resume", error)
