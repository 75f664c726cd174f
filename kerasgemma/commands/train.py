"""`kerasgemma train` and `kerasgemma resume`: start or continue a run, print its folder.

    kerasgemma train --preset gemma_2b_en --data baike.jsonl --max-steps 500 --save-every 50
    kerasgemma train --config run.yaml --lr 1e-4      # the file, then flags on top
    kerasgemma resume runs/20261128-101500            # after a crash, Ctrl-C or kill -9
"""

import kerasgemma as kg

from kerasgemma.commands.config_flags import add_config_arguments
from kerasgemma.commands.config_flags import config_from_args


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


def run_train(args):
    return report_run(kg.train(config_from_args(args), progress=not args.no_progress))


def run_resume(args):
    return report_run(kg.resume(args.run_dir, progress=not args.no_progress))
