"""`kerasgemma plan`: the memory a LoRA run needs per device, before any weight is loaded, and a setting that fits.

    kerasgemma plan --preset gemma_2b_en --device t4 --sequence-length 4096
    kerasgemma plan --preset gemma4_instruct_4b --device tpu-v5e-8 --batch-size 8 --json

The first line is the plan of the setting asked for; when it does not fit,
the next is the recommendation (`kerasgemma.distribution.memory.recommend`:
quantize, then remat, then a smaller batch). When nothing fits, a one-line
error with the smallest plan's numbers and exit code 2.
"""

import json

from kerasgemma.distribution.memory import DEVICE_PROFILES
from kerasgemma.distribution.memory import device_profile
from kerasgemma.distribution.memory import memory_plan
from kerasgemma.distribution.memory import recommend
from kerasgemma.distribution.strategy import DistributionError
from kerasgemma.errors import UserError
from kerasgemma.config import QUANTIZE_MODES
from kerasgemma.config import REMAT_CHOICES


def add_parser(subparsers):
    """Register `plan` on an argparse `subparsers` object."""
    parser = subparsers.add_parser(
        "plan",
        help="Memory per device for a preset on a device, and a setting that fits.",
        description="Estimate base-weight, LoRA/optimizer and activation memory per device from the preset's "
        "config (no weights loaded), and recommend a mesh, quantize, remat and batch that fit.",
    )
    parser.add_argument("--preset", required=True, help="Any preset `kerasgemma train` takes.")
    parser.add_argument("--device", required=True, choices=sorted(DEVICE_PROFILES) + ["cpu"],
                        help="The hardware (cpu: this machine).")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default=None, help="Quantized base weights.")
    parser.add_argument("--remat", choices=REMAT_CHOICES, default="none", help="Rematerialisation per block.")
    parser.add_argument("--batch-size", type=int, default=4, help="Global rows per micro-batch.")
    parser.add_argument("--sequence-length", type=int, default=512, help="Tokens per row.")
    parser.add_argument("--lora-rank", type=int, default=4, help="LoRA rank.")
    parser.add_argument("--lora-targets", default="query,value", help="Layers with LoRA.")
    parser.add_argument("--dtype", default="auto", help="Base-weight dtype (auto: what train picks there).")
    parser.add_argument("--json", action="store_true", help="Print the plans as JSON.")
    parser.set_defaults(run=run_plan)


def run_plan(args):
    settings = dict(dtype=args.dtype, batch_size=args.batch_size, sequence_length=args.sequence_length,
                    lora_rank=args.lora_rank, lora_targets=args.lora_targets)
    try:
        devices = device_profile(args.device)
        asked = memory_plan(args.preset, devices, quantize=args.quantize, remat=args.remat, **settings)
    except DistributionError as error:
        raise UserError(f"{args.preset} on {args.device}: {error}") from error
    fit, tried = (asked, [asked]) if asked.fits else recommend(args.preset, devices, **settings)
    if args.json:
        print(json.dumps({"asked": asked.to_dict(), "recommended": fit and fit.to_dict()}, indent=2))
    else:
        print(f"Plan: {asked.describe()}")
        if fit is not None and fit is not asked:
            print(f"Recommended: {fit.setting()}: {fit.total_bytes / 2**30:.2f} GiB of "
                  f"{fit.budget_bytes / 2**30:.2f} GiB usable per device")
    if fit is None:
        smallest = min(tried, key=lambda plan: max(plan.total_bytes, plan.load_bytes))
        raise UserError(f"nothing fits {args.preset} on {args.device}; smallest tried: {smallest.describe()}")
    return 0
