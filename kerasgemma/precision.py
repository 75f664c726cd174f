"""What `dtype="auto"` means on the device at hand, and why.

- CPU: float32 (bfloat16 matmuls are slow there; docs/facts.md#precision).
- TPU and NVIDIA GPUs of compute capability 8.0 or newer (A100, L4, H100):
  bfloat16.
- NVIDIA GPUs older than 8.0 (T4, V100, P100: Colab's and Kaggle's free
  GPUs) have no bfloat16 arithmetic: float16, which kerasgemma trains with
  dynamic loss scaling (`kerasgemma.training.optimizer.make_optimizer`). The
  measurements behind the choice are in docs/facts.md#float16.

A device is told by its `compute_capability` (JAX's CUDA devices report
e.g. "7.5"), else by its `device_kind` name ("Tesla T4").

Example:
>>> class FakeGpu:
...     platform, device_kind, compute_capability = "gpu", "Tesla T4", "7.5"
>>> auto_dtype(FakeGpu())
('float16', 'Tesla T4 (compute capability 7.5) has no bfloat16 arithmetic: float16 with dynamic loss scaling')
"""

import jax

AUTO = "auto"
# NVIDIA's bfloat16 arithmetic starts with Ampere (compute capability 8.0).
BFLOAT16_MIN_COMPUTE_CAPABILITY = (8, 0)
# Pre-Ampere NVIDIA names, for a GPU that reports no compute capability.
NO_BFLOAT16_GPU_NAMES = (
    "K80", "M40", "M60", "P4", "P40", "P100", "V100", "T4", "TITAN V", "TITAN RTX", "RTX 20", "GTX",
)


def _compute_capability(device):
    """`(major, minor)` of a CUDA device, or None when it reports none (or not as digits)."""
    capability = getattr(device, "compute_capability", None)
    try:
        major, minor = str(capability).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def has_bfloat16(device):
    """Whether `device` (a JAX device) computes bfloat16 natively.

    Example:
    >>> class FakeGpu:
    ...     platform, device_kind = "gpu", "Tesla V100-SXM2-16GB"
    >>> has_bfloat16(FakeGpu())
    False
    """
    if device.platform != "gpu":
        return device.platform == "tpu"
    capability = _compute_capability(device)
    if capability is not None:
        return capability >= BFLOAT16_MIN_COMPUTE_CAPABILITY
    kind = getattr(device, "device_kind", "").upper()
    return not any(name in kind for name in NO_BFLOAT16_GPU_NAMES)


def default_device():
    """The device a run trains on first: JAX's first device."""
    return jax.devices()[0]


def auto_dtype(device=None):
    """`(dtype, reason)` that `dtype="auto"` stands for on `device` (default: `default_device()`)."""
    device = device or default_device()
    kind = getattr(device, "device_kind", "") or device.platform
    if device.platform == "cpu":
        return "float32", "CPU: bfloat16 matmuls are slow there"
    if has_bfloat16(device):
        return "bfloat16", f"{kind} computes bfloat16 natively"
    capability = _compute_capability(device)
    known = f" (compute capability {capability[0]}.{capability[1]})" if capability else ""
    return "float16", f"{kind}{known} has no bfloat16 arithmetic: float16 with dynamic loss scaling"


def resolve_dtype(dtype, device=None):
    """`dtype`, with "auto" replaced by `auto_dtype(device)`'s choice.

    Example:
    >>> resolve_dtype("float32")
    'float32'
    """
    return auto_dtype(device)[0] if dtype == AUTO else dtype
