"""A memory plan for a LoRA run, from the preset's config alone: what each device holds, and a setting that fits.

Per device, for a `(batch, model)` mesh from `choose_strategy` and `rows =
batch_size / batch` rows of `T = sequence_length` tokens:

    base        = parameters x bytes per weight / model
                  (bytes: the dtype's, or `QUANTIZED_BITS / 8` with quantize;
                  keras-hub's layout also splits over `batch`, so this is an
                  upper estimate under model parallel)
    lora        = 16 x LoRA parameters (float32 weight, gradient, two AdamW moments)
    activations = rows x T x c x (kept + one_block) + loss + dequantized
      kept      = L x (6H + 2A + 2K + 4F + 2S)     remat "none": every block's intermediates
                = L x (2H + 2A + 2K + 2F + a)      remat "dots": the projections' outputs, and
                                                   a = A, the fused attention's output (0 with S)
                = L x H                            remat "block": each block's input
      one_block = 6H + 2A + 2K + 4F + 2S           (recomputed in the backward; 0 for "none")
      S         = n x T                            the attention scores, or 0 where a fused
                                                   attention kernel never writes them
      loss      = 8 x min(rows x T, LOSS_CHUNK_TOKENS) x V + 4 x rows x T x H
                                                   (a float32 logits slice and its exp, the final hidden)
      dequantized = V x H x c                      (quantize: the fused loss reads the table dequantized)
                  + L x 3 x H x F x c              (quantize, Gemma 4, remat "none": its MLP reads its
                                                   kernels directly, so their dequantized copies are
                                                   kept for the backward pass)
    total       = base + lora + activations, against `USABLE_FRACTION` of the device

with c the compute dtype's bytes, L layers, H hidden, A = query heads x
head_dim, K = key/value heads x head_dim, F the MLP width, n query heads and
V the vocabulary. Gemma 4's per-layer embeddings, shared-KV layers and MoE
experts count in `base` (exact, `count_parameters`) but not in the
activation terms (a Gemma 1-3 block is assumed).

The fused kernel is cuDNN's flash attention, which `keras.ops.dot_product_attention`
uses on Ampere and newer GPUs when the attention has no soft-cap (Gemma 2
has one and falls back to einsum attention). The H200 rows of
`bench/memory.py` (bench/results/2026-11-29-h200-memory*.json) showed it:
with the scores counted, Gemma 2B at 4096 tokens without remat was estimated
at 1.8x its measured peak; without them every measured row is within
`MEASURED_MARGIN` (tests/test_memory_plan.py checks each committed row). On
a TPU it is the Splash kernel that `kerasgemma.attention.packed_attention`
runs for every layer, soft-cap or not (`kerasgemma.splash`; it keeps its
output and log-sum-exp, no scores: read from its source, not measured on a
TPU). On a Hopper or later GPU `packed_attention` runs kerasgemma's own
flash kernel (`kerasgemma.flash_attention`; no scores, soft-cap or not);
the plan still counts Gemma 2's scores there, as cuDNN's fallback needs
them: an overestimate on the safe side (measured on an H200 at 8 x 1024
tokens: Gemma 2 2B 25.0 GiB with the kernel, 30.6 GiB without), kept so
that the committed H200 rows, measured before the kernel, still check the
plan. On CPU and older GPUs the scores are counted; tests/test_memory_plan.py
also checks the estimate against XLA's `memory_analysis()` of the compiled
train step on CPU.

Loading. A quantized base is loaded in `dtype` and quantized on the host CPU
(`kerasgemma.distribution.on_host`), then only the quantized weights go to
the devices (`Strategy.loads_on_host`; the mesh is chosen for them). The host
then needs `host_load` = the float weights + `QUANTIZE_SCRATCH_BYTES` per
weight of the largest weight while it is quantized (measured,
`kerasgemma.quantize_slices`; each quantized weight replaces its float one,
so the float weights bound the rest), against `HOST_USABLE_FRACTION` of the
host RAM where it is known (`DeviceInfo.host_memory_bytes`). Without a CPU
backend, or when the host RAM is too small, the float base is loaded on the
devices and quantized there, which needs `load` = float + quantized weights
per device for a moment.

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
from kerasgemma.precision import NO_BFLOAT16_GPU_NAMES
from kerasgemma.precision import resolve_dtype
from kerasgemma.quantization import QUANTIZED_BITS
from kerasgemma.quantize_slices import QUANTIZE_SCRATCH_BYTES
from kerasgemma.config import REMAT_CHOICES

# Share of a device's memory the plan lets a run use: XLA's scratch,
# fragmentation and the compiled program take the rest.
USABLE_FRACTION = 0.9
# Share of the host RAM the plan lets loading use (Python, the data, the
# tokenizer and the page cache take the rest).
HOST_USABLE_FRACTION = 0.9
# Estimate / measured peak lies within these: XLA's memory_analysis
# (argument + temp bytes) of the compiled step on CPU, and every GPU row of
# bench/results/*-memory*.json (tests/test_memory_plan.py checks both).
MEASURED_MARGIN = (0.67, 1.5)
# Named devices: (count, memory per device, host RAM). T4: 15 GiB of its
# 16 GB are usable (what Colab reports); v3-8: 4 chips x 2 cores of 16 GiB.
# Host RAM, published figures (not measured here): Colab's free T4 runtime
# shows 12.7 GB of system RAM; Kaggle's GPU sessions (T4 x2, P100) and its
# TPU v5e-8 VM are listed with about 29-31 GB (the lower figure is used).
# None where it varies with the machine (a cloud A100/H100, a TPU v3-8 VM).
DEVICE_PROFILES = {
    "tpu-v5e-8": DeviceInfo("tpu", 8, 16 * 2**30, "TPU v5 lite", host_memory_bytes=29 * 10**9),
    "tpu-v3-8": DeviceInfo("tpu", 8, 16 * 2**30, "TPU v3"),
    "t4": DeviceInfo("gpu", 1, 15 * 2**30, "Tesla T4", host_memory_bytes=int(12.7 * 10**9)),
    "t4x2": DeviceInfo("gpu", 2, 15 * 2**30, "Tesla T4", host_memory_bytes=29 * 10**9),
    "p100": DeviceInfo("gpu", 1, 16 * 2**30, "Tesla P100-PCIE-16GB", host_memory_bytes=29 * 10**9),
    "a100-40g": DeviceInfo("gpu", 1, 40 * 2**30, "NVIDIA A100-SXM4-40GB"),
    "h100": DeviceInfo("gpu", 1, 80 * 2**30, "NVIDIA H100 80GB HBM3"),
}
AUTO_DTYPE = {"tpu": "bfloat16", "cpu": "float32"}


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
    return "bfloat16" if _ampere_or_newer(devices) else "float16"


def _ampere_or_newer(devices):
    """A GPU of compute capability 8.0 or more, judged by name (`kerasgemma.precision`'s list)."""
    kind = devices.kind.upper()
    return devices.platform == "gpu" and not any(name in kind for name in NO_BFLOAT16_GPU_NAMES)


def fused_attention(devices, config):
    """Whether the attention of `config` on `devices` keeps no score matrix: cuDNN's flash attention, or Splash on a TPU.

    Example:
    >>> from kerasgemma.tiny import tiny_backbone_config
    >>> fused_attention(DEVICE_PROFILES["h100"], tiny_backbone_config("gemma3", 600))
    True
    >>> fused_attention(DEVICE_PROFILES["t4"], tiny_backbone_config("gemma3", 600))
    False
    >>> fused_attention(DEVICE_PROFILES["tpu-v5e-8"], tiny_backbone_config("gemma2", 600))
    True
    """
    if devices.platform == "tpu":
        return True  # kerasgemma.splash, soft-cap or not
    # Keras' `_can_use_flash_attention` needs compute capability 8.0, like bfloat16.
    return _ampere_or_newer(devices) and not config.get("attention_logit_soft_cap")


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


def activation_bytes(config, architecture, rows, sequence_length, compute_dtype, remat="none", quantize=None,
                     scores=True):
    """Activation memory of one device's train step (the formula in the module docstring).

    `scores`: whether the attention scores are written (False under a fused
    attention kernel, `fused_attention`).

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
    score = heads * sequence_length if scores else 0
    full_block = 6 * hidden + 2 * query + 2 * kv + 4 * width + 2 * score
    kept = {
        "none": layers * full_block,
        "dots": layers * (2 * hidden + 2 * query + 2 * kv + 2 * width + (0 if scores else query)) + full_block,
        "block": layers * hidden + full_block,
    }[remat]
    loss = 8 * min(tokens, LOSS_CHUNK_TOKENS) * vocabulary + 4 * tokens * hidden
    dequantized = 0
    if quantize:
        dequantized = vocabulary * hidden * c
        if architecture.startswith("gemma4") and remat == "none":
            dequantized += layers * 3 * hidden * width * c
    return tokens * c * kept + loss + dequantized


def largest_weight(config, architecture):
    """Parameters of the model's largest single weight: the token table, or Gemma 4's per-layer table.

    Example:
    >>> from kerasgemma.distribution.sizing import GEMMA4_TEXT_CONFIGS
    >>> largest_weight(GEMMA4_TEXT_CONFIGS["gemma4_4b"], "gemma4") / 1e9
    2.818572288
    """
    layers, hidden, _, _, width, _, vocabulary = _shape(config, architecture)
    per_layer = config.get("hidden_size_per_layer_input", 0)
    per_layer_table = (config.get("vocab_size_per_layer_input") or vocabulary) * layers * per_layer
    return max(vocabulary * hidden, per_layer_table, hidden * width)


def host_budget_bytes(devices):
    """Host RAM loading may use (`HOST_USABLE_FRACTION`), or None when `devices` does not know the host's RAM.

    Example:
    >>> host_budget_bytes(DEVICE_PROFILES["t4"]) / 1e9, host_budget_bytes(DEVICE_PROFILES["h100"])
    (11.43, None)
    """
    host = devices.host_memory_bytes
    return None if host is None else int(HOST_USABLE_FRACTION * host)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one setting, the host RAM loading needs, and whether they fit (`memory_plan`)."""

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
    host_load_bytes: int
    lora_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self):
        return self.base_bytes + self.lora_bytes + self.activation_bytes

    @property
    def budget_bytes(self):
        return int(USABLE_FRACTION * self.devices.memory_bytes)

    @property
    def host_budget_bytes(self):
        """Host RAM loading may use, or None when the host's RAM is unknown."""
        return host_budget_bytes(self.devices)

    @property
    def fits(self):
        # A base quantized on the host was put there only when it fits the
        # host RAM (`memory_plan`); otherwise `load_bytes` holds the float base.
        return max(self.total_bytes, self.load_bytes) <= self.budget_bytes

    def setting(self):
        mesh = "x".join(map(str, self.strategy.mesh))
        return (f"mesh {mesh} ({self.strategy.kind}), dtype {self.dtype}, quantize {self.quantize or 'none'}, "
                f"remat {self.remat}, batch {self.batch_size} x {self.sequence_length} tokens")

    def loading(self):
        """Where the base is loaded and what that needs, in words."""
        host = "" if self.host_budget_bytes is None else f" of {gib(self.host_budget_bytes)} usable"
        if self.strategy.loads_on_host:
            return f"loads on the host: {gib(self.host_load_bytes)} of host RAM{host}"
        if self.host_load_bytes:
            return (f"too big to quantize on the host ({gib(self.host_load_bytes)} of host RAM{host}), "
                    f"loads on the devices: {gib(self.load_bytes)} per device")
        return f"loading {gib(self.load_bytes)} per device"

    def describe(self):
        """One line: the numbers per device and the verdict."""
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{self.parameters / 1e9:.2f} B parameters; per device: base {gib(self.base_bytes)} + LoRA/optimizer "
                f"{gib(self.lora_bytes)} + activations {gib(self.activation_bytes)} = {gib(self.total_bytes)} "
                f"of {gib(self.budget_bytes)} usable ({self.loading()}): {verdict} [{self.setting()}]")

    def to_dict(self):
        return {
            "preset": self.preset, "device": self.devices.describe(), "mesh": list(self.strategy.mesh),
            "distribution": self.strategy.kind, "dtype": self.dtype, "quantize": self.quantize, "remat": self.remat,
            "batch_size": self.batch_size, "sequence_length": self.sequence_length, "parameters": self.parameters,
            "base_bytes": self.base_bytes, "load_bytes": self.load_bytes, "loads_on_host": self.strategy.loads_on_host,
            "host_load_bytes": self.host_load_bytes, "host_budget_bytes": self.host_budget_bytes,
            "lora_bytes": self.lora_bytes, "activation_bytes": self.activation_bytes,
            "total_bytes": self.total_bytes, "budget_bytes": self.budget_bytes, "fits": self.fits,
        }


def memory_plan(preset, devices, dtype="auto", quantize=None, remat="none", batch_size=4, sequence_length=512,
                lora_rank=4, lora_targets="query,value", distribution="auto", mesh=None, backbone=None,
                host_loading=True):
    """The `MemoryPlan` of one setting, with the mesh `choose_strategy` picks for the weights the devices hold.

    Args:
        preset: str. Any preset `load_causal_lm` takes (only its config is read).
        devices: `DeviceInfo` (`device_profile`).
        backbone: `(architecture, config)` already read, or None.
        host_loading: bool. Whether a quantized base can be loaded and
            quantized on the host CPU (JAX has a CPU backend).

    Raises:
        DistributionError: no mesh holds the weights, or a bad mesh/batch.
    """
    architecture, config = backbone or preset_backbone_config(preset)
    dtype = auto_dtype_for(devices) if dtype == "auto" else resolve_dtype(dtype)
    parameters = count_parameters(config, architecture)
    float_bytes = parameters * DTYPE_BYTES[dtype]
    stored = float_bytes if quantize is None else int(parameters * QUANTIZED_BITS[quantize] / 8)
    host_load = 0
    if quantize is not None and host_loading:
        largest = largest_weight(config, architecture)
        host_load = float_bytes + int(largest * QUANTIZE_SCRATCH_BYTES[quantize])
    host_budget = host_budget_bytes(devices)
    on_host = bool(host_load) and (host_budget is None or host_load <= host_budget)
    strategy = choose_strategy(stored if on_host else float_bytes, devices, batch_size, distribution, mesh)
    strategy = dataclasses.replace(strategy, loads_on_host=on_host)
    model_axis = strategy.mesh[1]
    rows = math.ceil(batch_size / strategy.mesh[0])
    compute = "float32" if dtype.startswith("mixed") else dtype
    activations = activation_bytes(config, architecture, rows, sequence_length, compute, remat, quantize,
                                   scores=not fused_attention(devices, config))
    return MemoryPlan(
        preset=preset, devices=devices, strategy=strategy, dtype=dtype, quantize=quantize, remat=remat,
        batch_size=batch_size, sequence_length=sequence_length, parameters=parameters,
        base_bytes=stored // model_axis,
        load_bytes=(stored if on_host or quantize is None else float_bytes + stored) // model_axis,
        host_load_bytes=host_load,
        lora_bytes=16 * lora_parameters(config, architecture, lora_rank, lora_targets),
        activation_bytes=activations,
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
