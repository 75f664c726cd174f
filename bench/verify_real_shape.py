"""Export + verify a Gemma 4 text model at a real preset's layer shapes, with non-zero LoRA.

The tests prove every Gemma 4 feature on tiny models; this checks the same
mapping at a preset's real depth and widths (35 layers of E2B: 20 KV-shared,
double-wide MLPs, 256-wide per-layer inputs, 512-wide partial-RoPE global
heads). Weights are random, the vocabulary is the tiny test tokenizer's (a
real 262k vocabulary would not fit two float32 copies in a 24 GiB machine),
and LoRA A and B are random on every linear layer of the text decoder.

    python bench/verify_real_shape.py --preset gemma4_2b --adapter                  # ~21 GiB of host memory
    python bench/verify_real_shape.py --preset gemma4_2b --adapter --num-layers 10  # same widths, ~7 GiB

Prints each verification report; exits 1 if one fails.
"""

import argparse
import tempfile

import keras
import numpy as np

from kerasgemma.distribution.sizing import GEMMA4_TEXT_CONFIGS
from kerasgemma.export.pipeline import export_and_verify
from kerasgemma.model import enable_lora
from kerasgemma.tiny import build_tiny_causal_lm


def real_shape_model(preset, num_layers=None, seed=0):
    """A Gemma 4 causal LM with `preset`'s text shapes, the tiny tokenizer and random non-zero LoRA.

    `num_layers`: keep only this many layers (the same widths, sliding/global
    pattern and share of KV-shared layers), for machines that cannot hold
    two float32 copies of the whole model.
    """
    tiny = build_tiny_causal_lm("gemma4")
    config = dict(GEMMA4_TEXT_CONFIGS[preset], vocabulary_size=tiny.backbone.vocabulary_size)
    if num_layers:
        shared = config.get("num_kv_shared_layers", 0) * num_layers // config["num_layers"]
        config.update(num_layers=num_layers, num_kv_shared_layers=shared)
    keras.utils.set_random_seed(seed)
    backbone = type(tiny.backbone)(**config, dtype="float32")
    causal_lm = type(tiny)(backbone=backbone, preprocessor=tiny.preprocessor)
    enable_lora(causal_lm, rank=4, alpha=8, targets="all")
    rng = np.random.default_rng(seed)
    for layer in causal_lm.backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_kernel_a.assign(rng.normal(0, 0.02, layer.lora_kernel_a.shape))
            layer.lora_kernel_b.assign(rng.normal(0, 0.02, layer.lora_kernel_b.shape))
    return causal_lm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gemma4_2b", choices=sorted(GEMMA4_TEXT_CONFIGS))
    parser.add_argument("--adapter", action="store_true", help="Also export and verify the PEFT adapter.")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--num-layers", type=int, help="Fewer layers than the preset (same widths and pattern).")
    args = parser.parse_args(argv)
    causal_lm = real_shape_model(args.preset, args.num_layers)
    print(f"{args.preset} text shapes: {causal_lm.backbone.count_params() / 1e9:.2f} B parameters "
          f"(tiny vocabulary), LoRA on {len([l for l in causal_lm.backbone._flatten_layers() if getattr(l, 'lora_enabled', False)])} layers")
    passed = True
    root = tempfile.mkdtemp(prefix="kerasgemma-real-shape-")
    for adapter_only in (False, True) if args.adapter else (False,):
        _, report = export_and_verify(
            causal_lm, f"{root}/{'adapter' if adapter_only else 'merged'}", adapter_only=adapter_only,
            base_model=args.preset, max_new_tokens=args.max_new_tokens, check_mlx=not adapter_only,
            progress=False,
        )
        print(report.summary())
        passed = passed and report.passed
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
