"""Build and run something on the host CPU, outside the training distribution.

A float32 copy of a bfloat16 model (the export's verification reference) is
twice the size of a bfloat16 model. Built while training's data-parallel
distribution is still installed it would be replicated on every
accelerator: for Gemma 2B, 9.3 GiB beside the model's own 4.7 GiB on each
16 GiB TPU v5e chip. Under `on_host()` no Keras
distribution is installed and JAX puts new arrays on the host's CPU device,
so the copy costs host memory only.

The same context loads a base that is quantized before training
(`kerasgemma.run.build_model`): the float weights are read and quantized on
the host, and `place_on_devices` then moves only the quantized weights to the
accelerators, laid out by the training distribution, so a float base larger
than one device (Gemma 4 E4B's on a 15 GiB T4) never occupies device memory.
"""

import contextlib

import jax
import keras
import numpy as np


def host_device():
    """JAX's first CPU device, or None when this process has no CPU backend.

    `JAX_PLATFORMS=tpu` (or `cuda`) leaves JAX without one.

    Example:
    >>> host_device().platform
    'cpu'
    """
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return None


@contextlib.contextmanager
def on_host(log=print):
    """A context where new Keras variables and JAX arrays live on the host CPU, unsharded.

    The installed Keras distribution is lifted for the duration and put back
    afterwards. Without a CPU backend the arrays go to JAX's default device
    instead (still not replicated), and `log` says so.

    Example:
    >>> with on_host():
    ...     variable = keras.Variable([1.0, 2.0])
    >>> variable.value.devices() == {host_device()}
    True
    """
    device = host_device()
    if device is None:
        log("warning: JAX has no CPU backend (JAX_PLATFORMS excludes cpu): the float32 reference "
            "goes to one accelerator instead")
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        with jax.default_device(device) if device is not None else contextlib.nullcontext():
            yield device
    finally:
        keras.distribution.set_distribution(previous)


# KERAS INTERNALS (keras 3.15, keras/src/backend/jax/core.py): a JAX Keras
# variable takes its layout from the installed distribution only when it is
# created (`JaxVariable._initialize_layout`, which reads
# `distribution.get_variable_layout(variable)` when `_layout` is None), and
# `JaxVariable._direct_assign(value)` puts a value on `_layout`
# (`distribute_tensor`, a `jax.device_put`) without the checks and the
# default-device copy of `assign`. `place_on_devices` calls both on variables
# created under `on_host()` (no distribution, `_layout` None). If either is
# renamed, placement raises AttributeError; if `_initialize_layout` stops
# setting `_layout`, the variables stay on the host CPU and training runs
# there or fails with "incompatible devices".
# tests/test_host_loading.py checks every variable's sharding after placement.


def place_on_devices(model):
    """Move every variable of `model` (built under `on_host()`) to the installed distribution's devices.

    Each variable gets the layout the Keras distribution gives it, exactly as
    if it had been created under that distribution; without a distribution
    it goes to JAX's default device uncommitted, as Keras creates variables
    there (a committed frozen weight beside uncommitted LoRA and optimizer
    arrays makes the train step's outputs committed, and the second step
    compile again: measured, 9 s on a tiny model). The host copies are
    dropped, so their memory is freed once nothing else holds them.

    Example:
    >>> with on_host():
    ...     layer = keras.layers.Dense(2)
    ...     layer.build((None, 3))
    >>> place_on_devices(layer)
    >>> layer.kernel.value.devices() == {jax.devices()[0]}
    True
    """
    for variable in model.variables:
        value = np.asarray(variable.value)
        variable._initialize_layout()
        if variable._layout is None:
            value = jax.device_put(value)
        variable._direct_assign(value)
