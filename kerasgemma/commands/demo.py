"""`kerasgemma demo`: the main job end to end on the embedded default, offline.

    kerasgemma demo                                   # real Gemma 3 270M, a few minutes on CPU
    kerasgemma demo --preset tiny:gemma3 --max-steps 2   # tiny random model, seconds
"""

import argparse

from kerasgemma.commands.config_flags import add_config_arguments
from kerasgemma.commands.config_flags import config_from_args
from kerasgemma.demo import DEMO_CONFIG
from kerasgemma.demo import __doc__ as DEMO_DOC
from kerasgemma.demo import run_demo


def add_parser(subparsers):
    """Register `demo` on an argparse `subparsers` object."""
    parser = subparsers.add_parser(
        "demo",
        help="Fine-tune, export and verify on the embedded default (offline).",
        description=DEMO_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, base=DEMO_CONFIG)
    parser.add_argument("--held-out", type=int, default=3, help="Held-out questions answered before and after (default 3).")
    parser.add_argument("--export-dtype", default="bfloat16", help="dtype of the exported weights (default bfloat16).")
    parser.add_argument("--skip-export", action="store_true", help="Stop after training and saving the LoRA weights.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.set_defaults(run=run)


def run(args):
    config = config_from_args(args, base=DEMO_CONFIG)
    report = run_demo(
        config,
        held_out=args.held_out,
        export=not args.skip_export,
        export_dtype=args.export_dtype,
        progress=not args.no_progress,
    )
    verification = report.get("export", {}).get("verification")
    if verification is not None:
        print(f"verification: max |Δlogits| = {verification['max_abs_logits_diff']:.3g} "
              f"(tolerance {verification['atol']:g}, LoRA merged) -> {'PASSED' if verification['passed'] else 'FAILED'}")
    print(report["run_dir"])
    return 0 if report.get("passed", True) else 1
