"""Export from a run trained on a quantized base (`TrainConfig.quantize`).

What is exported: the model that was trained. Its base is stored
weight-only quantized, so it computes `dequantize(W_q) x + LoRA(x)`
exactly (`kerasgemma.quantization`); the merged folder holds
`dequantize(W_q) + (alpha / rank) A B`, formed in float32 and then cast,
and the PEFT adapter holds A and B. Reloading the float base from the
preset and merging into it would export a model nobody trained: the LoRA
update was fitted to the quantized base's errors.

How it is checked: `dequantized_copy` builds that float32 model, which the
usual verification (`kerasgemma.export.verify`) then compares the folder
with, under its usual tolerance. This module measures the one remaining
step, the quantized Keras model itself against that copy, on the same
prompts (`trained_model_max_abs_logits_diff`): in float32 compute it
differs only by the order of float operations (measured ≤ 1e-6 on the tiny
models, checked at `TRAINED_MODEL_ATOL`); in bfloat16 compute it carries
bfloat16 rounding (~1e-2, as any bfloat16 model against its float32 copy)
and is reported, not checked.

The adapter is verified on the dequantized base it was trained with; on the
float transformers base a user loads it onto, it computes a slightly
different model (the quantization error of the base); the model card says so.
"""

import os

import numpy as np

from kerasgemma.atomic import write_text_atomic
from kerasgemma.export.verify import default_prompts
from kerasgemma.export.verify import keras_forward
from kerasgemma.export.tokenizer_files import special_token_ids
from kerasgemma.files import VERIFICATION_REPORT
from kerasgemma.quantization import dequantized_copy
from kerasgemma.quantization import quantization_mode

# Largest max |Δlogits| between the quantized model (float32 compute) and
# its dequantized float32 copy.
TRAINED_MODEL_ATOL = 1e-4


def logits_distance(first_lm, second_lm, prompts=None):
    """Max |Δ| of the float32 logits of two causal LMs (same tokenizer) over `prompts`.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma")
    >>> logits_distance(lm, lm)
    0.0
    """
    tokenizer = first_lm.preprocessor.tokenizer
    bos = special_token_ids(tokenizer)["<bos>"]
    ids = [[bos] + [int(t) for t in tokenizer(p)] for p in (prompts or default_prompts(tokenizer))]
    length = max(map(len, ids))
    first, second = keras_forward(first_lm, length), keras_forward(second_lm, length)
    return max(float(np.max(np.abs(first(row) - second(row)))) for row in ids)


def export_source(causal_lm, log=print):
    """`(model to export, facts about its base)`: a float copy of a quantized model, else the model.

    The facts are None for a float model, else `{"quantized_base": mode,
    "trained_model_max_abs_logits_diff": distance, "trained_model_atol":
    tolerance or None}`.
    """
    mode = quantization_mode(causal_lm)
    if mode is None:
        return causal_lm, None
    log(f"the base is {mode}-quantized: exporting its dequantized weights + LoRA (float32, then cast)")
    copy = dequantized_copy(causal_lm)
    distance = logits_distance(causal_lm, copy)
    float32_compute = causal_lm.backbone.compute_dtype == "float32"
    return copy, {
        "quantized_base": mode,
        "trained_model_max_abs_logits_diff": distance,
        "trained_model_atol": TRAINED_MODEL_ATOL if float32_compute else None,
    }


def add_to_report(report, facts):
    """Record `facts` (from `export_source`) in the report and its `verification.json`; fail if out of tolerance."""
    if report is None or facts is None:
        return report
    report.quantized_base = facts["quantized_base"]
    report.trained_model_max_abs_logits_diff = facts["trained_model_max_abs_logits_diff"]
    report.reference += f"; dequantized from the {facts['quantized_base']}-quantized model that was trained"
    atol = facts["trained_model_atol"]
    if atol is not None and facts["trained_model_max_abs_logits_diff"] > atol:
        report.failures.append(
            f"the quantized model and its dequantized copy differ by {facts['trained_model_max_abs_logits_diff']:.3g}"
            f" > {atol:g}"
        )
        report.passed = False
    write_text_atomic(os.path.join(report.folder, VERIFICATION_REPORT), report.to_json() + "\n")
    return report
