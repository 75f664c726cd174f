"""kerasgemma: LoRA instruction tuning of Gemma in Keras 3 (JAX), exported to Hugging Face."""

from kerasgemma.backend import ensure_jax_backend

ensure_jax_backend()

__version__ = "0.1.0"
