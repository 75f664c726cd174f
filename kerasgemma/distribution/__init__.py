"""Spread training over the devices at hand: TPU v3-8 / v5e-8, one or several GPUs, CPU.

One call before the model is built picks and installs the distribution:

    strategy = plan("gemma_7b_en", dtype="bfloat16", batch_size=8)   # prints the choice
    configure(strategy, "gemma")          # keras.distribution.set_distribution(...)
    causal_lm = load_causal_lm(...)       # variables are created sharded
    batch = shard_batch(numpy_batch)      # rows split over the `batch` axis

Several hosts (a TPU pod slice, GPU nodes): start the same script on every
host and call `keras.distribution.initialize()` first, before anything touches
JAX. It is JAX's own distributed runtime (`jax.distributed.initialize`): on
Cloud TPU it finds its peers by itself; on GPU nodes give the coordinator,
e.g. on each of 2 nodes

    KERAS_DISTRIBUTION_JOB_ADDRESSES=10.0.0.1:1234 \\
    KERAS_DISTRIBUTION_NUM_PROCESSES=2 KERAS_DISTRIBUTION_PROCESS_ID=<0|1> \\
    python train.py

(under SLURM or Open MPI `jax.distributed.initialize()` reads these from the
scheduler). After it, `detect_devices()` counts every host's devices, the mesh
spans them all, and each process feeds `shard_batch` its own rows.
"""

import keras

from kerasgemma.distribution.devices import DeviceInfo
from kerasgemma.distribution.devices import detect_devices
from kerasgemma.distribution.host import host_device
from kerasgemma.distribution.host import on_host
from kerasgemma.distribution.host import place_on_devices
from kerasgemma.distribution.layout import FittedModelParallel
from kerasgemma.distribution.layout import data_parallel_degree
from kerasgemma.distribution.layout import gemma3_layout_map
from kerasgemma.distribution.layout import layout_map
from kerasgemma.distribution.layout import make_distribution
from kerasgemma.distribution.layout import pad_to_replicas
from kerasgemma.distribution.layout import report_unsharded
from kerasgemma.distribution.layout import shard_batch
from kerasgemma.distribution.memory import memory_plan
from kerasgemma.distribution.sizing import estimate_param_bytes
from kerasgemma.distribution.sizing import preset_backbone_config
from kerasgemma.distribution.strategy import DistributionError
from kerasgemma.distribution.strategy import Strategy
from kerasgemma.distribution.strategy import choose_strategy
from kerasgemma.distribution.strategy import parse_mesh
from kerasgemma.precision import resolve_dtype


def plan(preset, dtype, batch_size, distribution="auto", mesh=None, devices=None, verbose=True, memory=None):
    """Choose the strategy for training `preset` in `dtype`, and say why.

    With `memory` (`memory_plan`'s settings: quantize, remat,
    sequence_length, lora_rank, lora_targets) the strategy is the memory
    plan's (`kerasgemma.distribution.memory`): a quantized base is loaded on
    the host CPU when the host RAM allows (`Strategy.loads_on_host`) and the
    mesh is chosen for the quantized weights; the printed line ends with the
    plan's numbers per device.

    Args:
        preset: str. Any preset `kerasgemma.model.load_causal_lm` takes.
        dtype: str. Weight dtype ("auto" = bfloat16 on accelerators).
        batch_size: int. Global rows per micro-batch.
        distribution: str. "auto", "data", "model" or "none".
        mesh: str or None. `(batch, model)` shape such as "2x4".
        devices: `DeviceInfo` or None (detected).
        verbose: bool. Print the choice and the reason.
        memory: dict or None. Settings for the memory plan.

    Returns:
        `(Strategy, architecture)`.

    Example:
    >>> one_cpu = DeviceInfo("cpu", 1, 8 * 2**30, "cpu")
    >>> strategy, architecture = plan("tiny:gemma3", "float32", 4, devices=one_cpu, verbose=False)
    >>> strategy.kind, architecture
    ('none', 'gemma3')
    >>> v3_8 = DeviceInfo("tpu", 8, 16 * 2**30, "TPU v3")
    >>> plan("tiny:gemma3", "float32", 8, devices=v3_8, verbose=False)[0].mesh
    (8, 1)
    >>> plan("tiny:gemma3", "float32", 4, devices=one_cpu, verbose=False, memory={"quantize": "int8"})[0].loads_on_host
    True
    """
    devices = devices or detect_devices()
    architecture, config = preset_backbone_config(preset)
    if memory is None:
        param_bytes = estimate_param_bytes(config, architecture, resolve_dtype(dtype))
        strategy = choose_strategy(param_bytes, devices, batch_size, distribution, mesh)
        line = ""
    else:
        host_loading = host_device() is not None
        if memory.get("quantize") and not host_loading and verbose:
            print("warning: JAX has no CPU backend (JAX_PLATFORMS excludes cpu): the float base is loaded on the "
                  "accelerators and quantized there")
        estimate = memory_plan(preset, devices, resolve_dtype(dtype), batch_size=batch_size, distribution=distribution,
                               mesh=mesh, backbone=(architecture, config), host_loading=host_loading, **memory)
        strategy, line = estimate.strategy, f" Memory: {estimate.describe()}."
    if verbose:
        print(f"Devices: {devices.describe()}. Distribution: {strategy.describe()}.{line}")
    return strategy, architecture


def configure(strategy, architecture, num_key_value_heads=None):
    """Install the Keras distribution of `strategy`; build the model after this.

    `num_key_value_heads` (from the backbone config) keeps query, key and
    value split alike under model parallel (see `FittedModelParallel`).

    Returns the distribution (None for a single device, which also clears
    any distribution set before).

    Example:
    >>> configure(Strategy("none", (1, 1), "one device"), "gemma3") is None
    True
    """
    distribution = make_distribution(strategy, architecture, num_key_value_heads)
    keras.distribution.set_distribution(distribution)
    return distribution


__all__ = [
    "DeviceInfo",
    "DistributionError",
    "FittedModelParallel",
    "Strategy",
    "choose_strategy",
    "configure",
    "detect_devices",
    "estimate_param_bytes",
    "host_device",
    "gemma3_layout_map",
    "layout_map",
    "data_parallel_degree",
    "make_distribution",
    "on_host",
    "pad_to_replicas",
    "place_on_devices",
    "parse_mesh",
    "plan",
    "preset_backbone_config",
    "report_unsharded",
    "shard_batch",
]
