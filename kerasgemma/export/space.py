"""How many bytes an export will write, checked against the free disk before it starts.

A merged folder holds every weight in the export dtype plus the tokenizer
files; an adapter holds the float32 LoRA matrices, and verifying it writes a
base folder (every weight, export dtype) beside it for the duration of the
check. An earlier export in the same folder is replaced only once the new
one is complete, so its bytes do not count as free. Kaggle's
`/kaggle/working` holds 20 GB: two merged Gemma 2B exports (5 GB each) and a
run folder fill much of it.
"""

import math
import os
import shutil

from kerasgemma.errors import UserError
from kerasgemma.export.weights import hf_tensor_shapes

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# tokenizer.json is up to ~7.1x the SentencePiece model (google/gemma-3-270m:
# 33.4 MB vs 4.69 MB); with tokenizer.model itself, 8x covers both.
TOKENIZER_FILES_PER_MODEL_BYTE = 8
# Configs, the model card, the verification report and filesystem slack.
HEADROOM_BYTES = 100 * 2**20


def _gb(n):
    return f"{n / 1e9:.2f} GB"


def weights_bytes(backbone, dtype):
    """Bytes of every weight of `backbone` written in `dtype` (LoRA merged or not: same shapes).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma")
    >>> weights_bytes(lm.backbone, "float32") == 2 * weights_bytes(lm.backbone, "bfloat16")
    True
    """
    count = sum(math.prod(shape) for shape in hf_tensor_shapes(backbone).values())
    return count * DTYPE_BYTES[dtype]


def tokenizer_bytes(tokenizer):
    """An upper estimate of tokenizer.model + tokenizer.json for `tokenizer`."""
    return TOKENIZER_FILES_PER_MODEL_BYTE * len(getattr(tokenizer, "proto", None) or b"")


def lora_bytes(backbone):
    """Bytes of the float32 LoRA matrices (a PEFT adapter's weights).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma")
    >>> lm.backbone.enable_lora(2)
    >>> lora_bytes(lm.backbone) == 4 * sum(math.prod(v.shape) for v in lm.backbone.trainable_weights)
    True
    """
    return sum(
        4 * (math.prod(layer.lora_kernel_a.shape) + math.prod(layer.lora_kernel_b.shape))
        for layer in backbone._flatten_layers(include_self=False)
        if getattr(layer, "lora_enabled", False)
    )


def export_bytes(causal_lm, adapter_only=False, dtype="bfloat16", verify=True):
    """`(bytes, what)`: the most disk the export will hold at once, and what that is.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma")
    >>> size, what = export_bytes(lm, dtype="float32")
    >>> size > weights_bytes(lm.backbone, "float32"), what.split(" (")[0]
    (True, 'merged float32 weights + tokenizer')
    """
    backbone = causal_lm.backbone
    tokenizer = causal_lm.preprocessor.tokenizer
    merged = weights_bytes(backbone, dtype) + tokenizer_bytes(tokenizer)
    if not adapter_only:
        return merged, f"merged {dtype} weights + tokenizer ({_gb(merged)})"
    adapter = lora_bytes(backbone)
    if not verify:
        return adapter, f"adapter ({_gb(adapter)})"
    return adapter + merged, f"adapter ({_gb(adapter)}) + the {dtype} base folder it is verified on ({_gb(merged)})"


def _existing_ancestor(path):
    path = os.path.abspath(os.fspath(path))
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_free_space(output_dir, needed, what):
    """Raise a one-line `UserError` unless the disk of `output_dir` has `needed` bytes + headroom free.

    Returns the free bytes. `output_dir` need not exist yet: its nearest
    existing parent folder is the one measured (the export's scratch folder
    is made beside it, on the same disk).

    Example:
    >>> import tempfile
    >>> free = check_free_space(tempfile.mkdtemp() + "/hf", 1, "one byte")
    >>> check_free_space(tempfile.mkdtemp() + "/hf", 10**18, "an exabyte")
    Traceback (most recent call last):
    ...
    kerasgemma.errors.UserError: not enough disk space for the export to ...: needs 1000000000.10 GB (an exabyte, plus 0.10 GB headroom), ... GB free in ....
    """
    folder = _existing_ancestor(output_dir)
    free = shutil.disk_usage(folder).free
    total = needed + HEADROOM_BYTES
    if free < total:
        raise UserError(
            f"not enough disk space for the export to {output_dir}: needs {_gb(total)} ({what}, plus "
            f"{_gb(HEADROOM_BYTES)} headroom), {_gb(free)} free in {folder}."
        )
    return free
