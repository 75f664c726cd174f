"""A memory plan for a LoRA run, from the preset's config alone: what each device holds, and a setting that fits.

Per device, for a `(batch, model)` mesh from `choose_strategy` and `rows =
batch_size / batch` rows of `T = sequence_length` tokens:

    base        = parameters x bytes per weight / model
                  (bytes: the dtype's, or `QUANTIZED_BITS / 8` with quantize;
                  keras-hub's layout also splits over `batch`, so this is an
                  upper estimate under model parallel)
    lora        = 16 x LoRA parameters (float32 weight, gradient, two AdamW moments)
    activations = rows x T x c x (kept + one_block) + loss + dequantized table
      kept      = L x (6H + 2A + 2K + 4F + 2nT)    remat "none": every block's intermediates
                = L x (2H + 2A + 2K + 2F + nT)     remat "dots": the matmul outputs
                = L x H                            remat "block": each block's input
      one_block = 6H + 2A + 2K + 4F + 2nT           (recomputed in the backward; 0 for "none")
      loss      = 8 x min(rows x T, LOSS_CHUNK_TOKENS) x V + 4 x rows x T x H
                                                   (a float32 logits slice and its exp, the final hidden)
      dequantized table = V x H x c                (quantize only: the fused loss reads it dequantized)
    total       = base + lora + activations, against `USABLE_FRACTION` of the device

with c the compute dtype's bytes, L layers, H hidden, A = query heads x
head_dim, K = key/value heads x head_dim, F the MLP width, n query heads and
V the vocabulary. Gemma 4's per-layer embeddings, shared-KV layers and MoE
experts count in `base` (exact, `count_parameters`) but not in the
activation terms (a Gemma 1-3 block is assumed). tests/test_memory_plan.py
checks the estimate against XLA's `memory_analysis()` of the compiled train
step on CPU (`MEASURED_MARGIN`).

Loading is not in the plan: a quantized base is loaded in `dtype` and then
quantized layer by layer, so for a moment the float weights are on the
device (`load` in the plan's numbers).

Example:
>>> plan = memory_plan("tiny:gemma3", DEVICE_PROFILES["t4"], batch_size=2, sequence_length=128)
>>> plan.fits, plan.dtype, plan.strategy.kind
(True, 'float16', 'none')
"""

import dataclasses
import math

from kerasgemma.distribution.devices import DeviceInfo
from kerasgemma.distribution.devices import detect_devices
from kerasgemma.distribution.sizing import DTYPE_BYTES
from kerasgemma.distribution.sizing import count_parameters
from kerasgemma.distribution.sizing import preset_backbone_config
from kerasgemma.distribution.strategy import DistributionError
from kerasgemma.distribution.strategy import choose_strategy
from kerasgemma.forward import LOSS_CHUNK_TOKENS
from kerasgemma.model import LORA_TARGET_GROUPS
from kerasgemma.model import resolve_lora_targets
from kerasgemma.precision import resolve_dtype
from kerasgemma.quantization import QUANTIZED_BITS
from kerasgemma.config import REMAT_CHOICES

# Share of a device's memory the plan lets a run use: XLA's scratch,
# fragmentation and the compiled program take the rest.
USABLE_FRACTION = 0.9
# tests/test_memory_plan.py: estimate / measured (XLA memory_analysis,
# argument + temp bytes) of the compiled step on CPU lies within these.
MEASURED_MARGIN = (0.67, 1.5)
# Named devices: (count, memory per device, dtype="auto" there). T4: 15 GiB
# of its 16 GB are usable (what Colab reports); v3-8: 4 chips x 2 cores of 16 GiB.
DEVICE_PROFILES = {
    "tpu-v5e-8": DeviceInfo("tpu", 8, 16 * 2**30, "TPU v5 lite"),
    "tpu-v3-8": DeviceInfo("tpu", 8, 16 * 2**30, "TPU v3"),
    "t4": DeviceInfo("gpu", 1, 15 * 2**30, "Tesla T4"),
    "p100": DeviceInfo("gpu", 1, 16 * 2**30, "Tesla P100-PCIE-16GB"),
    "a100-40g": DeviceInfo("gpu", 1, 40 * 2**30, "NVIDIA A100-SXM4-40GB"),
    "h100": DeviceInfo("gpu", 1, 80 * 2**30, "NVIDIA H100 80GB HBM3"),
}
AUTO_DTYPE = {"tpu": "bfloat16", "cpu": "float32"}
NO_BFLOAT16 = ("T4", "P100", "V100")


def gib(n):
    return f"{n / 2**30:.2f} GiB"


def device_profile(name):
    """`DeviceInfo` of a named device ("t4", "tpu-v5e-8", …), or of this machine for "cpu"/"local".

    Example:
    >>> device_profile("tpu-v5e-8").describe()
    '8 × TPU v5 lite (tpu), 16.0 GiB each, 1 process'
    """
    if name in ("cpu", "local"):
        return detect_devices()
    if name not in DEVICE_PROFILES:
        raise DistributionError(f"unknown device {name!r}; expected one of {sorted(DEVICE_PROFILES) + ['cpu']}")
    return DEVICE_PROFILES[name]


def auto_dtype_for(devices):
    """What `dtype="auto"` picks on `devices` (`kerasgemma.precision`'s rule, by device kind).

    Example:
    >>> auto_dtype_for(DEVICE_PROFILES["t4"]), auto_dtype_for(DEVICE_PROFILES["h100"])
    ('float16', 'bfloat16')
    """
    if devices.platform in AUTO_DTYPE:
        return AUTO_DTYPE[devices.platform]
    return "float16" if any(kind in devices.kind for kind in NO_BFLOAT16) else "bfloat16"


def _shape(config, architecture):
    """`(L, H, A, K, F, n, V)` of a text backbone config."""
    heads, head_dim = config["num_query_heads"], config["head_dim"]
    # Gemma 1/2 configs give intermediate_dim as twice each MLP kernel's width.
    width = config["intermediate_dim"] // (2 if architecture == "gemma" else 1)
    return (config["num_layers"], config["hidden_dim"], heads * head_dim, config["num_key_value_heads"] * head_dim,
            width, heads, config["vocabulary_size"])


def lora_parameters(config, architecture, rank, targets="query,value"):
    """LoRA weights: `rank x (inputs + outputs)` of every target kernel of every block.

    Example:
    >>> from kerasgemma.tiny import tiny_backbone_config
    >>> config = tiny_backbone_config("gemma", 600)
    >>> lora_parameters(config, "gemma", 4, "query")
    512
    """
    layers, hidden, query, kv, width, _, _ = _shape(config, architecture)
    sizes = {"query": hidden + query, "key": hidden + kv, "value": hidden + kv, "attention_output": query + hidden}
    ffw = [name for name in LORA_TARGET_GROUPS["all"] if name not in sizes]
    sizes.update({name: hidden + width for name in ffw})
    return layers * rank * sum(sizes[name] for name in resolve_lora_targets(targets))


def activation_bytes(config, architecture, rows, sequence_length, compute_dtype, remat="none", quantize=None):
    """Activation memory of one device's train step (the formula in the module docstring).

    Example:
    >>> from kerasgemma.tiny import tiny_backbone_config
    >>> config = tiny_backbone_config("gemma3", 600)
    >>> [activation_bytes(config, "gemma3", 4, 1024, "float32", r) > 0 for r in ("none", "dots", "block")]
    [True, True, True]
    """
    if remat not in REMAT_CHOICES:
        raise DistributionError(f"remat must be one of {REMAT_CHOICES}, got {remat!r}")
    layers, hidden, query, kv, width, heads, vocabulary = _shape(config, architecture)
    c, tokens = DTYPE_BYTES[compute_dtype], rows * sequence_length
    full_block = 6 * hidden + 2 * query + 2 * kv + 4 * width + 2 * heads * sequence_length
    kept = {
        "none": layers * full_block,
        "dots": layers * (2 * hidden + 2 * query + 2 * kv + 2 * width + heads * sequence_length) + full_block,
        "block": layers * hidden + full_block,
    }[remat]
    loss = 8 * min(tokens, LOSS_CHUNK_TOKENS) * vocabulary + 4 * tokens * hidden
    table = vocabulary * hidden * c if quantize else 0
    return tokens * c * kept + loss + table


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one setting, and whether they fit (`memory_plan`)."""

    preset: str
    devices: DeviceInfo
    strategy: object
    dtype: str
    quantize: str | None
    remat: str
    batch_size: int
    sequence_length: int
    parameters: int
    base_bytes: int
    load_bytes: int
    lora_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self):
        return self.base_bytes + self.lora_bytes + self.activation_bytes

    @property
    def budget_bytes(self):
        return int(USABLE_FRACTION * self.devices.memory_bytes)

    @property
    def fits(self):
        return max(self.total_bytes, self.load_bytes) <= self.budget_bytes

    def setting(self):
        mesh = "x".join(map(str, self.strategy.mesh))
        return (f"mesh {mesh} ({self.strategy.kind}), dtype {self.dtype}, quantize {self.quantize or 'none'}, "
                f"remat {self.remat}, batch {self.batch_size} x {self.sequence_length} tokens")

    def describe(self):
        """One line: the numbers per device and the verdict."""
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{self.parameters / 1e9:.2f} B parameters; per device: base {gib(self.base_bytes)} + LoRA/optimizer "
                f"{gib(self.lora_bytes)} + activations {gib(self.activation_bytes)} = {gib(self.total_bytes)} "
                f"(loading {gib(self.load_bytes)}) of {gib(self.budget_bytes)} usable: {verdict} "
                f"[{self.setting()}]")

    def to_dict(self):
        return {
            "preset": self.preset, "device": self.devices.describe(), "mesh": list(self.strategy.mesh),
            "distribution": self.strategy.kind, "dtype": self.dtype, "quantize": self.quantize, "remat": self.remat,
            "batch_size": self.batch_size, "sequence_length": self.sequence_length, "parameters": self.parameters,
            "base_bytes": self.base_bytes, "load_bytes": self.load_bytes, "lora_bytes": self.lora_bytes,
            "activation_bytes": self.activation_bytes, "total_bytes": self.total_bytes,
            "budget_bytes": self.budget_bytes, "fits": self.fits,
        }


def memory_plan(preset, devices, dtype="auto", quantize=None, remat="none", batch_size=4, sequence_length=512,
                lora_rank=4, lora_targets="query,value", distribution="auto", mesh=None, backbone=None):
    """The `MemoryPlan` of one setting; the mesh is `choose_strategy`'s for the stored base weights.

    Args:
        preset: str. Any preset `load_causal_lm` takes (only its config is read).
        devices: `DeviceInfo` (`device_profile`).
        backbone: `(architecture, config)` already read, or None.

    Raises:
        DistributionError: no mesh holds the weights, or a bad mesh/batch.
    """
    architecture, config = backbone or preset_backbone_config(preset)
    dtype = auto_dtype_for(devices) if dtype == "auto" else resolve_dtype(dtype)
    parameters = count_parameters(config, architecture)
    float_bytes = parameters * DTYPE_BYTES[dtype]
    stored = float_bytes if quantize is None else int(parameters * QUANTIZED_BITS[quantize] / 8)
    # The mesh `train` chooses: for the float weights it loads (`distribution.plan`).
    strategy = choose_strategy(float_bytes, devices, batch_size, distribution, mesh)
    model_axis = strategy.mesh[1]
    rows = math.ceil(batch_size / strategy.mesh[0])
    compute = "float32" if dtype.startswith("mixed") else dtype
    return MemoryPlan(
        preset=preset, devices=devices, strategy=strategy, dtype=dtype, quantize=quantize, remat=remat,
        batch_size=batch_size, sequence_length=sequence_length, parameters=parameters,
        base_bytes=stored // model_axis,
        load_bytes=(float_bytes + (stored if quantize else 0)) // model_axis,
        lora_bytes=16 * lora_parameters(config, architecture, lora_rank, lora_targets),
        activation_bytes=activation_bytes(config, architecture, rows, sequence_length, compute, remat, quantize),
    )


def recommend(preset, devices, dtype="auto", batch_size=4, sequence_length=512, lora_rank=4,
              lora_targets="query,value", distribution="auto", mesh=None):
    """`(plan that fits or None, every plan tried)`: the least change from float, no remat and `batch_size`.

    Tried in order: quantize none → int8 → int4, within each remat none →
    dots → block, within each the batch halved down to the data-parallel
    degree (the first fitting batch wins). A distribution error (weights
    that cannot fit any mesh) counts as not fitting.

    Example:
    >>> fit, tried = recommend("tiny:gemma", DEVICE_PROFILES["t4"], batch_size=4, sequence_length=64)
    >>> fit.quantize, fit.remat, fit.batch_size, len(tried)
    (None, 'none', 4, 1)
    """
    backbone = preset_backbone_config(preset)
    tried = []
    for quantize in (None,) + tuple(QUANTIZED_BITS):
        for remat in ("none", "dots", "block"):
            batch = batch_size
            while batch >= 1:
                try:
                    plan = memory_plan(preset, devices, dtype, quantize, remat, batch, sequence_length, lora_rank,
                                       lora_targets, distribution, mesh, backbone)
                except DistributionError:
                    break
                tried.append(plan)
                if plan.fits:
                    return plan, tried
                if batch % 2 or batch // 2 < plan.strategy.mesh[0]:
                    break
                batch //= 2
    return None, tried
