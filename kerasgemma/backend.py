"""Make sure Keras runs on the JAX backend before anything imports it."""

import os

REQUIRED_BACKEND = "jax"


def ensure_jax_backend():
    """Select the JAX backend, or fail clearly if another one is already set.

    kerasgemma's train step, packing masks and exports are written for JAX.
    Call this before the first `import keras` (importing `kerasgemma` does).

    Example:
    >>> from kerasgemma.backend import ensure_jax_backend
    >>> ensure_jax_backend()
    'jax'
    """
    backend = os.environ.setdefault("KERAS_BACKEND", REQUIRED_BACKEND)
    if backend != REQUIRED_BACKEND:
        raise RuntimeError(
            f"kerasgemma needs the JAX backend, but KERAS_BACKEND={backend!r}. "
            "Set KERAS_BACKEND=jax (or unset it) before starting Python."
        )
    import keras

    if keras.backend.backend() != REQUIRED_BACKEND:
        raise RuntimeError(
            f"Keras was imported with the {keras.backend.backend()!r} backend "
            "before kerasgemma. Restart Python with KERAS_BACKEND=jax."
        )
    return REQUIRED_BACKEND
