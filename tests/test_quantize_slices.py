"""`sliced_quantization`: Keras' quantization in slices on the host gives Keras' integers and scales."""

import gc
import weakref
from unittest import mock

import keras
import numpy as np
import pytest

from kerasgemma import quantize_slices
from kerasgemma.quantization import quantization_config
from kerasgemma.quantize_slices import sliced_quantization


def _layers(dtype):
    """Layers of every kind Gemma quantizes, with the shapes keras-hub gives them (small)."""
    rng = np.random.default_rng(0)
    dense = keras.layers.Dense(48, dtype=dtype)
    dense.build((None, 256))
    query = keras.layers.EinsumDense("btd,ndh->btnh", output_shape=(None, 4, 16), dtype=dtype)
    query.build((None, None, 256))
    output = keras.layers.EinsumDense("btnh,nhd->btd", output_shape=(None, 64), dtype=dtype)
    output.build((None, None, 4, 16))
    table = keras.layers.Embedding(300, 256, dtype=dtype)
    table.build((None,))
    layers = [dense, query, output, table]
    for layer in layers:
        for variable in layer.weights:
            variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return layers


def _quantized(layers, mode, sliced):
    # Keras' own path without its gc.collect() per layer (0.5 s each here;
    # the results do not depend on it).
    with sliced_quantization() if sliced else mock.patch("gc.collect", lambda *_: 0):
        for layer in layers:
            layer.quantize(mode, config=quantization_config(mode))
    return [{v.name: np.asarray(v.value) for v in layer.weights} for layer in layers]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_slices_give_keras_own_quantization(mode, monkeypatch):
    # Slices of 1000 weights: every layer here is cut into several, the last
    # one shorter.
    monkeypatch.setattr(quantize_slices, "SLICE_ELEMENTS", 1000)
    calls = []
    in_slices = quantize_slices._in_slices
    monkeypatch.setattr(quantize_slices, "_in_slices", lambda *args: calls.append(1) or in_slices(*args))
    keras_own = _quantized(_layers("float32"), mode, sliced=False)
    assert calls == []
    ours = _quantized(_layers("float32"), mode, sliced=True)
    # Keras reached the sliced functions for every layer (if it imported
    # them by name, it would not).
    assert len(calls) == 4
    for theirs, mine in zip(keras_own, ours):
        assert theirs.keys() == mine.keys()
        for name in theirs:
            if np.issubdtype(theirs[name].dtype, np.integer):
                np.testing.assert_array_equal(theirs[name], mine[name], err_msg=name)
            else:  # int4's group scales: XLA's division can round one place differently
                np.testing.assert_allclose(theirs[name], mine[name], rtol=2e-7, err_msg=name)


def test_bfloat16_weights_land_within_one_step():
    keras_own = _quantized(_layers("bfloat16"), "int8", sliced=False)
    ours = _quantized(_layers("bfloat16"), "int8", sliced=True)
    for theirs, mine in zip(keras_own, ours):
        for name in theirs:
            if theirs[name].dtype == np.int8:
                assert np.max(np.abs(theirs[name].astype(int) - mine[name])) <= 1, name
            else:
                np.testing.assert_allclose(theirs[name].astype("float32"), mine[name].astype("float32"), rtol=1e-2)


def test_deleted_float_kernels_are_freed_without_a_collection():
    # The context skips Keras' gc.collect() per deleted kernel: this holds
    # only while nothing Keras keeps refers to the deleted variable.
    layers = _layers("float32")
    kernels = [weakref.ref(layer.weights[0]) for layer in layers]
    gc.disable()
    try:
        with sliced_quantization():
            for layer in layers:
                layer.quantize("int8", config=quantization_config("int8"))
            alive = [ref() is not None for ref in kernels]
    finally:
        gc.enable()
    assert alive == [False] * len(layers)
    assert gc.collect is not None and gc.collect() >= 0  # restored
