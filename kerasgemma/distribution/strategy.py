"""Choose data or model parallel, and the mesh shape, from the model size and the devices.

The rule, in order:
1. Weights that fit in `memory_fraction` of one device (the rest is left for
   activations, LoRA optimizer state and XLA's scratch) are replicated: data
   parallel. With LoRA only the adapter gradients are all-reduced each step,
   a few MB, so data parallel scales almost for free.
2. Otherwise the `model` axis is the smallest divisor of the device count
   that brings weights / model under that budget, and the remaining devices
   form the `batch` axis (keras-hub's Gemma layout also splits the weights
   over `batch`, FSDP-style, so the real per-device share is smaller still).
3. The `batch` axis must divide the global batch: when it does not, devices
   move from `batch` to `model` until it does.
Weights that do not fit in whole device memory even split over every device
are an error, raised before anything is built or compiled.
"""

import dataclasses

from kerasgemma.config import KINDS
from kerasgemma.distribution.devices import DeviceInfo


class DistributionError(ValueError):
    """A distribution that cannot work, found before compilation starts."""


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How a run spreads over its devices.

    Args:
        kind: str. "data" (replicated weights, sharded batch), "model"
            (sharded weights over a `batch` × `model` mesh) or "none".
        mesh: tuple of int. `(batch, model)` sizes; their product is the
            device count ((1, 1) for "none").
        reason: str. Why this was chosen, for the log.
        devices: `DeviceInfo` or None.
        loads_on_host: bool. The float base is loaded and quantized on the
            host CPU and only the quantized weights are then placed on the
            devices (`kerasgemma.distribution.memory.memory_plan` decides).

    Example:
    >>> Strategy("model", (2, 4), "given").describe()
    'model parallel over a 2 (batch) × 4 (model) mesh: given'
    """

    kind: str
    mesh: tuple
    reason: str
    devices: DeviceInfo | None = None
    loads_on_host: bool = False

    @property
    def data_parallel_degree(self):
        return self.mesh[0]

    def describe(self):
        loading = "; the base is loaded and quantized on the host CPU first" if self.loads_on_host else ""
        if self.kind == "none":
            return f"single device: {self.reason}{loading}"
        if self.kind == "data":
            return f"data parallel over {self.mesh[0]} devices: {self.reason}{loading}"
        return f"model parallel over a {self.mesh[0]} (batch) × {self.mesh[1]} (model) mesh: {self.reason}{loading}"


def parse_mesh(mesh):
    """Read a mesh shape: "2x4", "2×4", (2, 4), or None.

    Example:
    >>> parse_mesh("2x4"), parse_mesh((1, 8)), parse_mesh(None)
    ((2, 4), (1, 8), None)
    """
    if mesh is None or mesh == "":
        return None
    if isinstance(mesh, str):
        parts = mesh.lower().replace("×", "x").split("x")
    else:
        parts = list(mesh)
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) < 1:
        raise DistributionError(f"mesh must be 'BATCHxMODEL' with positive sizes, e.g. '2x4'; got {mesh!r}.")
    return shape


def _gib(n):
    return f"{n / 2**30:.2f} GiB"


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def _largest_batch_axis(count, min_model, batch_size):
    """The largest `batch` axis b (b | count, count/b >= min_model, b | batch_size)."""
    return max(b for b in _divisors(count) if count // b >= min_model and batch_size % b == 0)


def choose_strategy(param_bytes, devices, batch_size, distribution="auto", mesh=None, memory_fraction=0.5):
    """Pick data or model parallel and the `(batch, model)` mesh.

    Args:
        param_bytes: int. Bytes of the model's weights (`estimate_param_bytes`).
        devices: `DeviceInfo` (`detect_devices()`).
        batch_size: int. Global rows per micro-batch.
        distribution: str. "auto", "data", "model" or "none".
        mesh: str, tuple or None. A `(batch, model)` shape such as "2x4";
            None lets "auto"/"model" choose.
        memory_fraction: float. Share of one device the weights may take.

    Raises:
        DistributionError: a mesh that does not match the device count, a
            batch the data-parallel degree does not divide, or weights that
            cannot fit even sharded over every device.

    Example:
    >>> v3_8 = DeviceInfo("tpu", 8, 16 * 2**30, "TPU v3")
    >>> choose_strategy(5 * 2**30, v3_8, batch_size=8).mesh    # Gemma 2B, bf16
    (8, 1)
    >>> choose_strategy(17 * 2**30, v3_8, batch_size=8).mesh   # Gemma 7B, bf16
    (2, 4)
    """
    if distribution not in KINDS:
        raise DistributionError(f"distribution must be one of {KINDS}, got {distribution!r}.")
    count = devices.count
    shape = parse_mesh(mesh)
    budget = memory_fraction * devices.memory_bytes
    if param_bytes / count > devices.memory_bytes:
        raise DistributionError(
            f"The weights ({_gib(param_bytes)}) cannot fit even sharded over all {count} devices: "
            f"{_gib(param_bytes / count)} per device > {_gib(devices.memory_bytes)} of memory "
            f"({devices.describe()}). Use more devices or a smaller dtype/model."
        )
    fitting = [m for m in _divisors(count) if param_bytes / m <= budget]
    min_model = fitting[0] if fitting else count
    weights = f"weights {_gib(param_bytes)}, budget {_gib(budget)} per device ({memory_fraction:.0%} of {_gib(devices.memory_bytes)})"

    if distribution == "none" or (distribution == "auto" and count == 1 and shape is None):
        if param_bytes > devices.memory_bytes:
            raise DistributionError(f"The weights ({_gib(param_bytes)}) do not fit on one device ({_gib(devices.memory_bytes)}).")
        note = f" (uses 1 of {count} devices)" if count > 1 else ""
        return Strategy("none", (1, 1), f"{weights}{note}", devices)

    if shape is not None:
        if shape[0] * shape[1] != count:
            raise DistributionError(
                f"mesh {shape[0]}x{shape[1]} needs {shape[0] * shape[1]} devices, but there are {count} "
                f"({devices.describe()}). Choose sizes whose product is {count}."
            )
        if distribution == "data" and shape[1] != 1:
            raise DistributionError(f"distribution='data' needs a model axis of 1, got mesh {shape[0]}x{shape[1]}.")
        reason = f"mesh {shape[0]}x{shape[1]} given; {weights}"
    elif distribution == "data":
        if min_model > 1:
            raise DistributionError(
                f"distribution='data' replicates the weights, but they do not fit one device ({weights}). "
                "Use distribution='model' or 'auto'."
            )
        shape = (count, 1)
        reason = f"{weights}: replicated"
    else:
        min_model = max(min_model, 2) if distribution == "model" else min_model
        batch_axis = _largest_batch_axis(count, min_model, batch_size)
        shape = (batch_axis, count // batch_axis)
        if min_model == 1:
            reason = f"{weights}: they fit replicated"
        else:
            reason = f"{weights}: at least {min_model}-way model parallel needed"
        if shape[1] > min_model:
            reason += f"; batch {batch_size} is not divisible by more than {batch_axis} replicas, so the rest shard the model"
    if batch_size % shape[0]:
        raise DistributionError(
            f"The global batch ({batch_size}) is not divisible by the data-parallel degree {shape[0]} "
            f"(mesh {shape[0]}x{shape[1]}). Use a batch size that is a multiple of {shape[0]}."
        )
    kind = "data" if shape[1] == 1 and distribution != "model" else "model"
    return Strategy(kind, shape, reason, devices)
