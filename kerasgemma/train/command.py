"""`kerasgemma train` and `kerasgemma resume`: start or continue a run, print its folder.

    kerasgemma train --preset gemma_2b_en --data baike.jsonl --max-steps 500 --save-every 50
    kerasgemma train --config run.yaml --lr 1e-4      # the file, then flags on top
    kerasgemma resume runs/20261128-101500            # after a crash or kill -9
"""

import sys

from kerasgemma.config_args import add_config_arguments
from kerasgemma.config_args import config_from_args


def add_parser(subparsers):
    train = subparsers.add_parser(
        "train",
        help="Fine-tune with LoRA; prints the run folder as the last line.",
        description="Fine-tune a Gemma preset with LoRA. Settings come from the defaults, then "
        "--config FILE (YAML/JSON), then flags. Example: kerasgemma train --config run.yaml --lr 1e-4",
    )
    add_config_arguments(train)
    train.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    resume = subparsers.add_parser(
        "resume",
        help="Continue a run from its newest checkpoint; prints the run folder.",
        description="Continue a killed or finished run from its newest complete checkpoint, "
        "with the config saved in the run folder.",
    )
    resume.add_argument("run_dir", help="The run folder printed by `kerasgemma train`.")
    resume.add_argument("--no-progress", action="store_true", help="Hide progress bars.")


def _report(run):
    summary = run.summary
    if summary.get("initial_val_loss") is not None:
        print(f"validation loss: {summary['initial_val_loss']:.4f} -> {summary['val_loss']:.4f}")
    print(f"steps: {summary['step']}, tokens: {summary['tokens']}, seconds: {summary['seconds']:.1f}")
    print(run.run_dir)
    return 0


def _fail(command, error):
    # Divergence and unusable output folders are expected failures with a
    # message that says what to do: no traceback.
    print(f"kerasgemma {command}: {error}", file=sys.stderr)
    return 1


def run_train(args):
    from kerasgemma.run import train
    from kerasgemma.train.loop import TrainingDiverged

    config = config_from_args(args)
    try:
        return _report(train(config, progress=not args.no_progress))
    except (TrainingDiverged, OSError) as error:
        return _fail("train", error)


def run_resume(args):
    from kerasgemma.run import resume
    from kerasgemma.train.loop import TrainingDiverged

    try:
        return _report(resume(args.run_dir, progress=not args.no_progress))
    except (TrainingDiverged, OSError) as error:
        return _fail("resume", error)


run = run_train
