"""Keras' weight quantization in slices, compiled on the host CPU, with one garbage collection at the end.

`quantize_base` (`kerasgemma.quantization`) runs Keras' own
`Model.quantize` inside `sliced_quantization()`. Two things about Keras
3.15's quantization decide whether a large Gemma can be quantized on a
free notebook machine, and this context changes both:

- Keras computes every weight's scales and integers in NumPy on the host
  (`abs_max_quantize(..., to_numpy=True)`, "to save device memory"), the
  whole weight at once. Here the same Keras functions run with
  `to_numpy=False` (Keras' on-device path) under `jax.jit` on the host CPU,
  on slices of `SLICE_ELEMENTS` weights along an axis the scales are not
  taken over, so each slice is quantized exactly as the whole weight would
  be and the scratch is a slice's.
- `Layer.__delattr__` calls `gc.collect()` after each float kernel it
  deletes: 0.49 s each in a test process, 15 for a tiny Gemma (7.3 of its
  8.4 s of quantization), ~300 for Gemma 4 E4B. The deleted variables are
  freed by reference counting without it (tests/test_quantize_slices.py
  checks), so the collections are skipped and one runs at the end.

Host memory beyond the float weights while one bfloat16 weight of 134 M
values is quantized (a 262144 x 512 table and an 8192 x 16384 kernel; peak
RSS, 2 shared CPU cores, 2026-11-29): int8 Keras 14.0 bytes per weight,
sliced 1.9-2.4; int4 Keras 10.1-12.2, sliced 5.5-7.5 (int4's transposes
and packing stay Keras' own, outside the slices). Time: int8 5.7-7.3 s vs
2.8-3.5 s; int4 6.4-10.0 s vs 6.6-8.7 s. `QUANTIZE_SCRATCH_BYTES` holds
the sliced figures for the memory plan. For Gemma 4 E4B's per-layer
embedding table (2.8 B weights) int8 needs ~6.6 GiB of scratch instead
of ~37 GiB.

Results: Keras' function, on the same values, computed by XLA instead of
NumPy. Float32 weights quantize to the same integers (int4's group scales
can differ in the last place); bfloat16 ones can differ in the last place
of a product before rounding, so a weight lands one integer step away now
and then. Either way the quantization is deterministic, so a resume
rebuilds the same base.

Example:
>>> layer = keras.layers.Dense(4, dtype="float32")
>>> layer.build((None, 8))
>>> with sliced_quantization():
...     layer.quantize("int8")
>>> str(layer._kernel.dtype)
'int8'
"""

# KERAS INTERNALS (keras 3.15): Dense, EinsumDense, Embedding and
# ReversibleEmbedding `.quantize` look `abs_max_quantize` and
# `abs_max_quantize_grouped_with_zero_point` up at call time, as attributes
# of the package keras/src/quantizers (`from keras.src import quantizers`)
# or, through `AbsMaxQuantizer.__call__`, of its module quantizers.py; and
# Layer.__delattr__ (keras/src/layers/layer.py) does `import gc;
# gc.collect()`. This context replaces those attributes (and `gc.collect`)
# while it is open, for the whole process. If Keras imports them by name instead,
# quantization silently falls back to Keras' NumPy path: same model, the old
# host memory and time (tests/test_quantize_slices.py counts the calls and
# fails). If Keras' to_numpy=False path stops computing what the NumPy path
# does, the comparison in that test fails.

import contextlib
import functools
import gc

import jax
import keras
import numpy as np

# Weights per slice: 16 M (32 MiB in bfloat16), so a slice's scratch is a
# few hundred MiB at most.
SLICE_ELEMENTS = 2**24
# Host bytes per weight beyond the float weights while the largest weight
# is quantized in slices (measured, module docstring), for the memory plan.
QUANTIZE_SCRATCH_BYTES = {"int8": 2.5, "int4": 7.5}


# The functions replaced, by name; the layers read them from the package
# `keras.src.quantizers`, `AbsMaxQuantizer` from its module `quantizers.py`.
REPLACED = ("abs_max_quantize", "abs_max_quantize_grouped_with_zero_point")


@contextlib.contextmanager
def sliced_quantization():
    """A context where Keras' `layer.quantize` computes in slices on the host and skips its per-layer `gc.collect`."""
    from keras.src import quantizers as package
    from keras.src.quantizers import quantizers as module

    saved = [(owner, name, getattr(owner, name)) for owner in (package, module) for name in REPLACED]
    sliced = {"abs_max_quantize": _abs_max_sliced, "abs_max_quantize_grouped_with_zero_point": _grouped_sliced}
    collect = gc.collect
    for owner, name, keras_function in saved:
        setattr(owner, name, functools.partial(sliced[name], getattr(module, name)))
    gc.collect = lambda generation=2: 0
    try:
        yield
    finally:
        for owner, name, keras_function in saved:
            setattr(owner, name, keras_function)
        gc.collect = collect
        gc.collect()


def _abs_max_sliced(keras_function, inputs, axis, value_range=(-127, 127), dtype="int8",
                    epsilon=keras.backend.epsilon(), to_numpy=False):
    """Keras' `abs_max_quantize`; its NumPy path replaced by `_in_slices` (scales are taken over `axis`)."""
    if not to_numpy:
        return keras_function(inputs, axis, value_range, dtype, epsilon, to_numpy=False)
    axis = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    compiled = _compiled(keras_function, axis, tuple(value_range), dtype, epsilon)
    return _in_slices(inputs, axis, compiled)


def _grouped_sliced(keras_function, inputs, block_size, value_range=(-8, 7), dtype="int8",
                    epsilon=keras.backend.epsilon(), to_numpy=False):
    """Keras' `abs_max_quantize_grouped_with_zero_point` (groups along axis 0), sliced like `_abs_max_sliced`."""
    if not to_numpy:
        return keras_function(inputs, block_size, value_range, dtype, epsilon, to_numpy=False)
    compiled = _compiled(keras_function, block_size, tuple(value_range), dtype, epsilon)
    return _in_slices(inputs, (0,), compiled)


@functools.lru_cache(maxsize=None)
def _compiled(keras_function, axis_or_block, value_range, dtype, epsilon):
    """Keras' on-device path of `keras_function` with these settings, jitted."""
    return jax.jit(lambda x: keras_function(x, axis_or_block, value_range, dtype, epsilon, to_numpy=False))


def _in_slices(inputs, reduced_axes, compiled):
    """`compiled(inputs)` computed slice by slice along the longest axis not in `reduced_axes`, on the host CPU.

    Every output of `compiled` spans that axis whole (the integers, and the
    scales or zero points kept with `keepdims`), so the slices' outputs are
    written side by side into NumPy arrays of the full size. The weight is
    read as a NumPy array (no copy for one already on the host) and cut
    there, so only two slice shapes are ever compiled.
    """
    from kerasgemma.distribution.host import host_device  # here: that package imports this module's importer

    array = np.asarray(inputs.value if isinstance(inputs, keras.Variable) else inputs)
    reduced = {a % array.ndim for a in reduced_axes}
    free = [a for a in range(array.ndim) if a not in reduced]
    axis = max(free, key=lambda a: array.shape[a]) if free else 0
    length = array.shape[axis]
    step = max(1, SLICE_ELEMENTS * length // max(array.size, 1)) if free else length
    host = host_device()
    outputs = None
    for start in range(0, length, step):
        index = (slice(None),) * axis + (slice(start, min(start + step, length)),)
        results = compiled(jax.device_put(array[index], host))
        if outputs is None:
            outputs = [np.empty(r.shape[:axis] + (length,) + r.shape[axis + 1:], r.dtype) for r in results]
        for output, result in zip(outputs, results):
            output[index] = np.asarray(result)
    return tuple(keras.ops.convert_to_tensor(output) for output in outputs)
