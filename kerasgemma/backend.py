"""Make sure Keras runs on the JAX backend, without importing Keras to check.

Keras reads `KERAS_BACKEND` once, when it is first imported. The classic
pitfall is a notebook whose first cell is `import keras_nlp` (or
`keras_hub`, or `keras`) before the backend is chosen: Keras then starts on
TensorFlow, and kerasgemma's JAX train step fails much later with an
unrelated error. `ensure_jax_backend` sets the backend when Keras is not yet
imported, which costs nothing (importing Keras takes seconds, so
`kerasgemma --help` does not), and otherwise names the module that imported
Keras first.
"""

import os
import sys

REQUIRED_BACKEND = "jax"
# Modules that import Keras: whichever of them is loaded already is the likely culprit.
KERAS_IMPORTERS = ("keras_nlp", "keras_hub", "keras")


def wrong_backend_message(backend):
    """One line saying Keras started on `backend`, which module imported it, and what to do.

    Example:
    >>> wrong_backend_message("tensorflow")[:62]
    "Keras was imported with the 'tensorflow' backend before kerasg"
    """
    loaded = [name for name in KERAS_IMPORTERS if name in sys.modules]
    culprit = f" (by `import {loaded[0]}`)" if loaded else ""
    return (
        f"Keras was imported with the {backend!r} backend before kerasgemma{culprit}. "
        f"Restart Python and import kerasgemma first, or set os.environ['KERAS_BACKEND'] = 'jax' "
        f"before importing {loaded[0] if loaded else 'keras'}."
    )


def ensure_jax_backend():
    """Select the JAX backend, or fail clearly if another one is already set or in use.

    kerasgemma's train step, packing masks and exports are written for JAX.
    Call this before the first `import keras` (importing `kerasgemma` does).

    Example:
    >>> from kerasgemma.backend import ensure_jax_backend
    >>> ensure_jax_backend()
    'jax'
    """
    keras = sys.modules.get("keras")
    backend = os.environ.setdefault("KERAS_BACKEND", REQUIRED_BACKEND)
    if keras is not None and keras.backend.backend() != REQUIRED_BACKEND:
        raise RuntimeError(wrong_backend_message(keras.backend.backend()))
    if backend != REQUIRED_BACKEND:
        raise RuntimeError(
            f"kerasgemma needs the JAX backend, but KERAS_BACKEND={backend!r}. "
            "Set KERAS_BACKEND=jax (or unset it) before starting Python."
        )
    return REQUIRED_BACKEND
