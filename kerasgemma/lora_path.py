"""LoRA computed beside the frozen kernel instead of merged into it.

Keras 3's `Dense` and `EinsumDense` with LoRA enabled compute
`x·(W + (alpha/r)·A·B)`: their `kernel` property merges the update into the
kernel on every call. Under `jax.grad` that costs, per LoRA-carrying
projection and step, a merged kernel-sized matrix in the forward pass (kept
for the backward pass) and the dense gradient with respect to it,
`2·tokens·d_in·d_out` FLOPs, which is then projected onto A and B.

The "beside" path computes the same function as

    einsum(equation, x, W) + (alpha/r) · einsum(equation, x, A) @ B

so autodiff forms only thin products: `x·A` is `tokens × r`, and the
gradients of A and B cost `2·tokens·r·(d_in + d_out)` FLOPs each way. The
frozen W gets no gradient at all. `A` has the kernel's layout with its last
axis replaced by the rank (Keras' layout), so the same equation applies to it
as long as the kernel's last axis is the output's last axis and no input
axis: true of every projection of Gemma 1–4 in keras-hub 0.32 (query
`btd,ndh->btnh`, key/value `bsd,kdh->bskh`, attention_output
`btnh,nhd->btd`, ffw_gating(_2) `btd,df->btf`, ffw_linear `btf,fd->btd`;
Gemma 4's per-layer and router projections are plain `Dense`). A layer whose
equation breaks that keeps Keras' merged path, with a warning that says why.

How: `set_lora_path` gives each LoRA-enabled float layer a bound `call`
(an instance attribute; the class and every other layer are untouched), and
`"merged"` removes it again. The variables, their paths, `save_lora_weights`,
checkpoints and exports are unchanged: only how the forward pass is computed
differs. Quantized layers (Keras int8/int4/float8, …) never reach `call`:
Keras runs their `quantized_call`, which already adds LoRA beside the
quantized matmul, so they keep Keras' own path.

Numerics: in float32 both paths agree to round-off. With bfloat16 base
weights the beside path runs the LoRA branch in the compute dtype next to
the bfloat16 `x·W`, whereas the merged path rounds `W + (alpha/r)·A·B` to
bfloat16, which loses any part of the update below half an ulp of W; the
losses agree to bfloat16 noise, not bit for bit.

Example:
>>> from kerasgemma.tiny import build_tiny_causal_lm
>>> lm = build_tiny_causal_lm("gemma")
>>> lm.backbone.enable_lora(2)
>>> paths = set_lora_path(lm, "beside")
>>> sorted(set(paths.values()))
['beside']
>>> sorted(set(set_lora_path(lm, "merged").values()))
['merged']
"""

import types
import warnings

import keras
from keras import ops

LORA_PATHS = ("beside", "merged")


def beside_reason(layer):
    """Why `layer` cannot compute LoRA beside its kernel, or None if it can.

    Example:
    >>> layer = keras.layers.EinsumDense("btd,df->btf", output_shape=(None, 8))
    >>> layer.build((1, 2, 4))
    >>> layer.enable_lora(2)
    >>> beside_reason(layer) is None
    True
    """
    if not getattr(layer, "lora_enabled", False):
        return "LoRA is not enabled"
    if layer.quantization_mode is not None:
        return f"quantized ({layer.quantization_mode}): Keras' quantized_call adds LoRA beside already"
    if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
        return f"{type(layer).__name__} is neither Dense nor EinsumDense"
    if isinstance(layer, keras.layers.EinsumDense):
        return equation_reason(layer.equation)
    return None


def equation_reason(equation):
    """Why `x·A·B` does not equal `x·(A·B)` under `equation`, or None if it does.

    A (the kernel's shape with its last axis replaced by the rank) goes
    through the same equation, then `@ B` maps the rank back to the kernel's
    last axis. That needs the kernel's last axis to be the output's last
    axis, once in each, and absent from the input.

    Example:
    >>> equation_reason("btd,ndh->btnh") is None
    True
    >>> equation_reason("btd,dh->bht")
    "the kernel's last axis 'h' is not the output's last axis in 'btd,dh->bht'"
    """
    inputs, rest = equation.replace(" ", "").split(",")
    kernel, output = rest.split("->")
    last = kernel[-1:]
    if not last.isalpha() or output[-1:] != last:
        return f"the kernel's last axis {last!r} is not the output's last axis in {equation!r}"
    if kernel.count(last) != 1 or output.count(last) != 1 or last in inputs:
        return f"the kernel's last axis {last!r} is repeated or summed over in {equation!r}"
    return None


def set_lora_path(causal_lm, lora_path="beside"):
    """Choose how every LoRA-enabled layer of `causal_lm` computes its update.

    Args:
        causal_lm: a keras-hub causal LM (or backbone) with LoRA enabled.
        lora_path: "beside" (`x·W + (alpha/r)·(x·A)·B`, the default for
            training) or "merged" (Keras' `x·(W + (alpha/r)·A·B)`).

    Returns:
        dict: layer path -> the path it computes ("beside" or "merged"), or
        the reason it kept Keras' own path.
    """
    if lora_path not in LORA_PATHS:
        raise ValueError(f"lora_path must be one of {LORA_PATHS}, got {lora_path!r}.")
    model = getattr(causal_lm, "backbone", causal_lm)
    chosen = {}
    for layer in model._flatten_layers(include_self=False):
        if not getattr(layer, "lora_enabled", False):
            continue
        if "call" in vars(layer):
            del layer.call
        if lora_path == "merged":
            chosen[layer.path] = "merged"
            continue
        reason = beside_reason(layer)
        if reason is None:
            beside = _einsum_beside if isinstance(layer, keras.layers.EinsumDense) else _dense_beside
            layer.call = types.MethodType(beside, layer)
            chosen[layer.path] = "beside"
            continue
        if layer.quantization_mode is None:
            warnings.warn(f"LoRA of {layer.path} is merged into its kernel: {reason}.", stacklevel=2)
        chosen[layer.path] = reason
    return chosen


def _lora_branch(layer, inputs, product):
    """`(alpha/r)·(x·A)·B` in the compute dtype; the scale goes on the thin `x·A`."""
    dtype = layer.compute_dtype
    thin = product(inputs, ops.cast(layer.lora_kernel_a, dtype))
    thin = ops.multiply(thin, ops.cast(layer.lora_alpha / layer.lora_rank, dtype))
    return ops.matmul(thin, ops.cast(layer.lora_kernel_b, dtype))


def _finish(layer, outputs):
    if layer.bias is not None:
        outputs = ops.add(outputs, layer.bias)
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


def _einsum_beside(self, inputs, training=None):
    """`EinsumDense.call` with LoRA beside the frozen kernel (see module doc)."""

    def product(x, kernel):
        return ops.einsum(self.equation, x, kernel)

    kernel = ops.cast(self._kernel, self.compute_dtype)
    outputs = ops.add(product(inputs, kernel), _lora_branch(self, inputs, product))
    return _finish(self, outputs)


def _dense_beside(self, inputs, training=None):
    """`Dense.call` with LoRA beside the frozen kernel (see module doc)."""
    kernel = ops.cast(self._kernel, self.compute_dtype)
    outputs = ops.add(ops.matmul(inputs, kernel), _lora_branch(self, inputs, ops.matmul))
    return _finish(self, outputs)
