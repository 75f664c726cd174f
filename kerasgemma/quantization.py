"""Quantized base weights for LoRA training (QLoRA-style), with Keras' own quantization.

`quantize_base(causal_lm, "int8" | "int4")` calls keras-hub's
`backbone.quantize(mode, config=...)` (Keras 3's `Model.quantize`) before
LoRA is switched on: every `Dense`, `EinsumDense`, `Embedding` and
`ReversibleEmbedding` keeps an integer kernel and its scales, and
`enable_lora` then adds float32 LoRA matrices beside them (Keras' quantized
layers support LoRA: `Dense._int8_call` / `_int4_call` add
`inputs @ A @ B * alpha / rank` after the dequantized matmul, and their
custom gradients pass the gradient on to the inputs).

Both modes are weight-only here: "int8" is per-output-channel int8 with
activations left in the compute dtype (Keras' default for "int8" would also
quantize every layer's inputs to int8 on the fly, which costs accuracy the
LoRA weights would have to learn around and makes the trained function
differ from any float model); "int4" is Keras' default sub-channel int4
(groups of 128 inputs, a scale and zero point per group), weight-only by
default. So the trained model computes exactly
`dequantize(W_q) @ x + LoRA(x)`, and `dequantized_copy` builds that model
in float32 for export (`kerasgemma.export`), which then merges and verifies
it like any float model.

The vision and audio towers of multimodal presets stay float (they are
frozen, small, and keras-hub's Gemma 4 tower reads its kernels directly).
The embedding is quantized too (it is a quarter of Gemma 2B and most of
Gemma 4 E4B with its per-layer table); the fused loss reads it through
`dequantized_embeddings`, one table-sized temporary per step.

keras-hub issue 1705 (`quantize` + `enable_lora` + `save_to_preset` does
not reload): Keras' `save_own_variables` of a quantized LoRA layer merges
LoRA into the integer kernel and re-quantizes it, so the saved preset holds
neither the LoRA weights its config announces nor the trained function.
kerasgemma never saves the quantized model: checkpoints hold the LoRA and
optimizer arrays (`kerasgemma.training.checkpoint`), `adapter.lora.h5` the
LoRA matrices alone (`Backbone.save_lora_weights`), and a resume rebuilds
the quantized base from the float preset (quantization is deterministic).

Example (`dequantized_copy` shows a whole quantized model):
>>> QUANTIZE_MODES, QUANTIZED_BITS["int4"]
(('int8', 'int4'), 4.125)
"""

import warnings

import keras
import numpy as np

from kerasgemma.config import QUANTIZE_MODES
from kerasgemma.quantize_slices import sliced_quantization

# KERAS-HUB INTERNALS: keras-hub 0.32's Gemma 4 decoder block computes its
# MLP as `ops.matmul(x, self.gating_ffw.kernel)` (gemma4_decoder_block.py,
# "HOTFIX ... bypass graph tracer bugs"), not through the layers' call, so a
# quantized layer's `kernel` (the raw integers plus LoRA) would be used as
# if it were the float kernel. These layers get a `kernel` that
# dequantizes (`_DequantizingKernel`); Gemma 1-3 call their layers.
KERNEL_READERS = ("gating_ffw", "gating_ffw_2", "ffw_linear")
# Bits per base weight of each mode (the scales add ~1% for int8 per
# channel, 2 x 8 bits per 128 weights = 12.5% of int4's for int4 groups).
QUANTIZED_BITS = {"int8": 8.0, "int4": 4.0 + 16.0 / 128}


def quantization_config(mode):
    """The Keras `QuantizationConfig` of `mode`: weight-only int8 or int4.

    Example:
    >>> quantization_config("int8").activation_quantizer is None
    True
    """
    if mode == "int8":
        return keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
    if mode == "int4":
        return keras.quantizers.Int4QuantizationConfig(activation_quantizer=None)
    raise ValueError(f"quantize must be one of {QUANTIZE_MODES} or None, got {mode!r}")


def quantize_base(causal_lm, mode):
    """Quantize the backbone's weights in place (before `enable_lora`); None does nothing.

    Keras' `Model.quantize`, run in slices on the host CPU
    (`kerasgemma.quantize_slices`: a slice's scratch memory instead of
    ~9x the largest weight's bytes, and no garbage collection per layer).
    """
    if mode is None:
        return
    if any(getattr(layer, "lora_enabled", False) for layer in causal_lm.backbone._flatten_layers()):
        raise ValueError("Quantize the base before enabling LoRA.")
    backbone = causal_lm.backbone
    towers = {
        id(layer)
        for tower in (getattr(backbone, "vision_encoder", None), getattr(backbone, "audio_encoder", None))
        if tower is not None
        for layer in tower._flatten_layers(include_self=True)
    }
    with warnings.catch_warnings(), sliced_quantization():
        # "Layer RMSNormalization does not have a `quantize` method": norms,
        # rotary embeddings and softmaxes stay as they are, as intended.
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method.*")
        backbone.quantize(mode, config=quantization_config(mode), filters=lambda layer: id(layer) not in towers)
    for block in backbone.transformer_layers:
        for name in KERNEL_READERS:
            layer = getattr(block, name, None)
            if layer is not None and getattr(layer, "quantization_mode", None) is not None:
                layer.__class__ = _dequantizing_class(type(layer))


class _DequantizingKernel:
    """`kernel` of a quantized layer as float base + LoRA, for callers that read it directly."""

    @property
    def kernel(self):
        if self.quantization_mode is None:
            return super().kernel
        kernel = dequantized_kernel(self)
        if self.lora_enabled:
            delta = keras.ops.matmul(self.lora_kernel_a, self.lora_kernel_b)
            kernel = kernel + (self.lora_alpha / self.lora_rank) * keras.ops.cast(delta, kernel.dtype)
        return keras.ops.cast(kernel, self.compute_dtype)


def _dequantizing_class(layer_class):
    """`layer_class` with `_DequantizingKernel`'s `kernel` (one subclass per class)."""
    if issubclass(layer_class, _DequantizingKernel):
        return layer_class
    if layer_class not in _DEQUANTIZING_CLASSES:
        _DEQUANTIZING_CLASSES[layer_class] = type(f"Dequantizing{layer_class.__name__}", (_DequantizingKernel, layer_class), {})
    return _DEQUANTIZING_CLASSES[layer_class]


_DEQUANTIZING_CLASSES = {}


def quantization_mode(causal_lm):
    """"int8", "int4" or None: how the backbone's base weights are stored."""
    for layer in causal_lm.backbone._flatten_layers(include_self=False):
        mode = getattr(layer, "quantization_mode", None)
        if mode is not None:
            return mode
    return None


def float_kernel(layer):
    """The dequantized base kernel (no LoRA) of a quantized `Dense`/`EinsumDense`, as float32 numpy."""
    return np.asarray(keras.ops.convert_to_numpy(dequantized_kernel(layer)))


def dequantized_kernel(layer):
    """The dequantized base kernel (no LoRA) of a quantized `Dense`/`EinsumDense`, float32; traceable.

    The same arithmetic as the layer's `_int8_call`/`_int4_call`
    (keras/src/layers/core/dense.py and einsum_dense.py, Keras 3.15); the
    tests check a float layer holding it computes what the quantized one does.
    """
    from keras.src.quantizers.quantizers import dequantize_with_sz_map

    ops = keras.ops
    mode = layer.quantization_mode
    einsum = isinstance(layer, keras.layers.EinsumDense)
    scale = layer.kernel_scale
    if mode == "int8":
        if einsum:
            scale = layer._adjust_scale_for_dequant(scale)
        kernel = ops.divide(ops.cast(layer._kernel, "float32"), ops.cast(scale, "float32"))
    elif mode == "int4":
        columns = layer._int4_unpacked_column_size if einsum else layer._orig_output_dim
        unpacked = ops.cast(keras.quantizers.unpack_int4(layer._kernel, columns, axis=-1), "float32")
        if getattr(layer, "_int4_block_size", None) in (None, -1):
            kernel = ops.divide(unpacked, ops.cast(scale, "float32"))
        else:
            kernel = dequantize_with_sz_map(unpacked, scale, layer.kernel_zero, layer.g_idx, group_axis=0)
        if einsum:
            kernel = ops.reshape(kernel, layer.original_kernel_shape)
    else:
        raise ValueError(f"{layer.name}: cannot dequantize mode {mode!r}")
    return ops.cast(kernel, "float32")


def dequantized_embeddings(embedding):
    """The embedding table `(vocab, hidden)` in the compute dtype, quantized or not; traceable.

    A quantized table is read through the layer's own lookup
    (`quantized_call` of every token id), so its dequantization is Keras'.
    """
    if embedding.quantization_mode is None:
        return embedding.embeddings
    vocabulary = embedding.input_dim
    return embedding.quantized_call(keras.ops.arange(vocabulary, dtype="int32"))


def dequantized_copy(causal_lm, dtype="float32"):
    """A float causal LM computing what the quantized `causal_lm` computes.

    Same architecture and preprocessor; every quantized kernel and table is
    replaced by its dequantized values (`float_kernel`, `dequantized_embeddings`),
    every other weight and the LoRA matrices are copied. Its memory is a
    float model's: made for export, which needs float weights anyway.

    Example:
    >>> from kerasgemma.model import load_causal_lm, enable_lora
    >>> lm = load_causal_lm("tiny:gemma")
    >>> quantize_base(lm, "int4")
    >>> _ = enable_lora(lm, rank=2)
    >>> copy = dequantized_copy(lm)
    >>> quantization_mode(copy), sorted({v.dtype for v in copy.backbone.weights})
    (None, ['float32'])
    """
    backbone = causal_lm.backbone
    config = backbone.get_config()
    config["dtype"] = dtype
    copy = type(backbone).from_config(config)
    pairs = list(zip(backbone._flatten_layers(include_self=False), copy._flatten_layers(include_self=False)))
    copy.trainable = backbone.trainable
    for source, target in pairs:
        target.trainable = source.trainable
    for source, target in pairs:
        if getattr(source, "lora_enabled", False):
            target.enable_lora(source.lora_rank, lora_alpha=source.lora_alpha)
    for source, target in pairs:
        if not target._trainable_variables and not target._non_trainable_variables:
            continue
        own = {variable.name: variable for variable in source._trainable_variables + source._non_trainable_variables}
        quantized = getattr(source, "quantization_mode", None) is not None
        for variable in target._trainable_variables + target._non_trainable_variables:
            if quantized and variable.name == "kernel":
                value = float_kernel(source)
            elif quantized and variable.name == "embeddings":
                value = keras.ops.convert_to_numpy(dequantized_embeddings(source))
            elif variable.name in own:
                value = keras.ops.convert_to_numpy(own[variable.name].value)
            else:
                raise RuntimeError(f"{target.path}: no value for {variable.name} in {source.path}")
            variable.assign(np.asarray(value, dtype=np.float32).reshape(variable.shape))
    copy._lora_enabled_layers = list(getattr(backbone, "_lora_enabled_layers", []))
    copy._lora_rank = getattr(backbone, "_lora_rank", None)
    return type(causal_lm)(backbone=copy, preprocessor=causal_lm.preprocessor)
