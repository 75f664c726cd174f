"""Build and run something on the host CPU, outside the training distribution.

A float32 copy of a bfloat16 model (the export's verification reference) is
twice the size of a bfloat16 model. Built while training's data-parallel
distribution is still installed it would be replicated on every
accelerator: for Gemma 2B, 9.3 GiB beside the model's own 4.7 GiB on each
16 GiB TPU v5e chip. Under `on_host()` no Keras
distribution is installed and JAX puts new arrays on the host's CPU device,
so the copy costs host memory only.
"""

import contextlib

import jax
import keras


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
