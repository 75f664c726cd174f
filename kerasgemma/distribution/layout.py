"""Layout maps for Gemma 1/2/3/4, the Keras distribution they feed, and batch placement.

Weights are laid out as keras-hub lays out Gemma 1/2 (after the Gemma team's
training config): each large kernel is split over `model` on its heads or
FFW width and over `batch` on the hidden dimension, so a `batch` × `model` mesh
splits it over every device. Gemma 3 has the same kernel names, plus q/k norm
scales of `head_dim` floats, which stay replicated.

Two things keras-hub leaves to the user are handled here:
- a mesh axis that does not divide a dimension (Gemma 2B's single key/value
  head on a `model` axis of 8) makes `jax.device_put` fail while the model is
  being built; `FittedModelParallel` drops that axis from that variable only.
- LoRA matrices (`lora_kernel_a`/`_b`) match no rule and are replicated. They
  hold a few MB at most; the merged kernel `base + A @ B` is computed where
  the base shard lives (XLA slices the replicated A locally), and the LoRA
  gradients are all-reduced — the same few MB. Following the kernel's `model`
  axis would save nothing measurable and adds a layout for every rank.
"""

import re

import jax
import keras
import keras_hub
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from kerasgemma.distribution.strategy import DistributionError

BATCH_AXIS = "batch"
MODEL_AXIS = "model"


def gemma3_layout_map(device_mesh, model_parallel_dim_name=MODEL_AXIS, data_parallel_dim_name=BATCH_AXIS):
    """A `keras.distribution.LayoutMap` for `Gemma3Backbone` (text weights).

    keras-hub 0.32 has `GemmaBackbone.get_layout_map` but none for Gemma 3.
    Variable paths and shapes (Gemma 3 1B):
    `token_embedding/embeddings` (262144, 1152);
    `decoder_block_N/attention/{query,key,value}/kernel` (heads, 1152, 256);
    `decoder_block_N/attention/attention_output/kernel` (4, 256, 1152);
    `decoder_block_N/attention/{query,key}_norm/scale` (256,), replicated;
    `decoder_block_N/ffw_gating{,_2}/kernel` (1152, 6912);
    `decoder_block_N/ffw_linear/kernel` (6912, 1152); norm scales replicated.

    Example:
    >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), keras.distribution.list_devices()[:1])
    >>> layout = gemma3_layout_map(mesh)
    >>> layout["decoder_block_3/attention/query/kernel"].axes
    ('model', 'batch', None)
    >>> layout["decoder_block_3/attention/query/lora_kernel_a"] is None
    True
    """
    model, data = model_parallel_dim_name, data_parallel_dim_name
    layout_map = keras.distribution.LayoutMap(device_mesh)
    layout_map["token_embedding/embeddings"] = (model, data)
    layout_map["decoder_block.*attention.*(query|key|value).kernel"] = (model, data, None)
    layout_map["decoder_block.*attention_output.kernel"] = (model, None, data)
    layout_map["decoder_block.*ffw_gating.kernel"] = (data, model)
    layout_map["decoder_block.*ffw_gating_2.kernel"] = (data, model)
    layout_map["decoder_block.*ffw_linear.kernel"] = (model, data)
    return layout_map


def gemma4_layout_map(device_mesh, model_parallel_dim_name=MODEL_AXIS, data_parallel_dim_name=BATCH_AXIS):
    """A `keras.distribution.LayoutMap` for `Gemma4Backbone` (dense and MoE text weights).

    Gemma 3's rules for attention and the dense MLP (the same variable
    paths), plus:
    `per_layer_token_embedding/embeddings` (262144, layers x 256), the
    largest weight of E2B/E4B, split like the token embedding;
    `per_layer_model_projection/kernel` (hidden, layers x 256);
    `decoder_block_N/per_layer_input_gate/kernel` (hidden, 256) and
    `per_layer_up_proj/kernel` (256, hidden), split on hidden only;
    `decoder_block_N/moe_expert_bank/{gate,up}_proj` (experts, hidden,
    expert width) and `down_proj` (experts, expert width, hidden): experts
    over `model`, hidden over `batch`. K=V layers simply have no `value`,
    KV-shared layers no `key`/`value`. The router, the norms and the
    vision/audio towers (`encoder_block…` paths) stay replicated. The token
    embedding rule is anchored: unanchored it also matches
    `per_layer_token_embedding`, and Keras refuses a path two rules match.

    Example:
    >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), keras.distribution.list_devices()[:1])
    >>> layout = gemma4_layout_map(mesh)
    >>> layout["decoder_block_3/moe_expert_bank/down_proj"].axes
    ('model', None, 'batch')
    >>> layout["per_layer_token_embedding/embeddings"].axes
    ('model', 'batch')
    """
    model, data = model_parallel_dim_name, data_parallel_dim_name
    layout = gemma3_layout_map(device_mesh, model, data)
    del layout["token_embedding/embeddings"]
    layout["^token_embedding/embeddings"] = (model, data)
    layout["per_layer_token_embedding/embeddings"] = (model, data)
    layout["per_layer_model_projection/kernel"] = (data, model)
    layout["decoder_block.*per_layer_input_gate/kernel"] = (data, None)
    layout["decoder_block.*per_layer_up_proj/kernel"] = (None, data)
    layout["decoder_block.*moe_expert_bank/(gate_proj|up_proj)"] = (model, data, None)
    layout["decoder_block.*moe_expert_bank/down_proj"] = (model, None, data)
    return layout


# Layout map of each architecture (see `kerasgemma.export.hf_config.architecture_of`).
LAYOUT_MAPS = {
    "gemma": lambda mesh: keras_hub.models.GemmaBackbone.get_layout_map(mesh, MODEL_AXIS, BATCH_AXIS),
    "gemma2": lambda mesh: keras_hub.models.GemmaBackbone.get_layout_map(mesh, MODEL_AXIS, BATCH_AXIS),
    "gemma3": lambda mesh: gemma3_layout_map(mesh),
    "gemma4": lambda mesh: gemma4_layout_map(mesh),
    "gemma4-moe": lambda mesh: gemma4_layout_map(mesh),
}


def layout_map(architecture, device_mesh):
    """The layout map of `architecture` ("gemma", "gemma2", "gemma3") on `device_mesh`.

    Example:
    >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), keras.distribution.list_devices()[:1])
    >>> layout_map("gemma", mesh)["decoder_block_0/ffw_linear/kernel"].axes
    ('model', 'batch')
    """
    if architecture in LAYOUT_MAPS:
        return LAYOUT_MAPS[architecture](device_mesh)
    raise DistributionError(f"No layout map for architecture {architecture!r}; expected one of {sorted(LAYOUT_MAPS)}.")


def fit_axes(axes, shape, mesh_sizes):
    """Drop each mesh axis that does not divide its dimension.

    Example:
    >>> fit_axes(("model", "batch", None), (1, 2048, 256), {"batch": 1, "model": 8})
    (None, 'batch', None)
    """
    return tuple(
        axis if axis is None or dim % mesh_sizes[axis] == 0 else None
        for axis, dim in zip(axes, shape)
    )


ATTENTION_KERNEL = re.compile(r"attention/(query|key|value|attention_output)/kernel$")


class FittedModelParallel(keras.distribution.ModelParallel):
    """`ModelParallel` that fits each variable's layout to its shape (see `fit_axes`).

    Keras asks the distribution for a variable's layout when the variable is
    created; the variable's shape is known then, so the fitting happens there.

    Query, key and value must be split alike: cuDNN's fused attention refuses
    to partition otherwise (measured on 2 GPUs with Gemma 2B, one key/value
    head: "Query, key and value should have same sharding"). So when the
    key/value heads do not divide the `model` axis, no attention kernel is
    split over it (`num_key_value_heads`): query and output heads neither, or
    sharding propagation would split the query heads anyway. The FFW and
    embedding, most of the weights, stay split.
    """

    def __init__(self, *args, num_key_value_heads=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_key_value_heads = num_key_value_heads

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        sizes = dict(zip(self.device_mesh.axis_names, self.device_mesh.shape))
        axes = fit_axes(layout.axes, variable.shape, sizes)
        model_size = sizes.get(MODEL_AXIS, 1)
        if (
            self.num_key_value_heads is not None
            and self.num_key_value_heads % model_size
            and ATTENTION_KERNEL.search(variable.path)
        ):
            axes = tuple(None if axis == MODEL_AXIS else axis for axis in axes)
        if axes == tuple(layout.axes):
            return layout
        return keras.distribution.TensorLayout(axes, self.device_mesh)


def device_mesh(shape):
    """A `(batch, model)` `keras.distribution.DeviceMesh` over all devices.

    The device order comes from `jax.make_mesh`, which follows the physical
    topology (TPU ICI rings, NVLink islands), so the `model` axis — the one
    that talks every layer — lands on the fastest links.
    """
    devices = jax.make_mesh(tuple(shape), (BATCH_AXIS, MODEL_AXIS)).devices
    return keras.distribution.DeviceMesh(tuple(shape), (BATCH_AXIS, MODEL_AXIS), devices)


def make_distribution(strategy, architecture, num_key_value_heads=None):
    """The Keras distribution of a `Strategy` (None for "none").

    Example:
    >>> from kerasgemma.distribution.strategy import Strategy
    >>> make_distribution(Strategy("none", (1, 1), "one device"), "gemma3") is None
    True
    """
    if strategy.kind == "none":
        return None
    mesh = device_mesh(strategy.mesh)
    if strategy.kind == "data":
        flat = keras.distribution.DeviceMesh((strategy.mesh[0],), (BATCH_AXIS,), mesh.devices.reshape(-1))
        return keras.distribution.DataParallel(device_mesh=flat)
    return FittedModelParallel(
        layout_map=layout_map(architecture, mesh),
        batch_dim_name=BATCH_AXIS,
        num_key_value_heads=num_key_value_heads,
    )


def shard_batch(batch, distribution=None, batch_axis=0):
    """Place a batch dict's arrays on the devices, rows split over `batch`.

    Pass `batch_axis=1` for stacked micro-batches `(k, batch, seq)`. With
    several processes each one passes the rows its own devices take, as
    `distribution.distribute_dataset` would give it; the global array is
    assembled by `jax.make_array_from_process_local_data`.

    Args:
        batch: dict of NumPy arrays.
        distribution: a Keras distribution; None means the global one, and
            with none set the batch is returned as it is.
        batch_axis: int. The axis that holds the rows.

    Example:
    >>> import numpy as np
    >>> shard_batch({"token_ids": np.zeros((2, 4), np.int32)})["token_ids"].shape
    (2, 4)
    """
    distribution = distribution or keras.distribution.distribution()
    if distribution is None:
        return batch
    mesh = distribution.device_mesh
    replicas = data_parallel_degree(distribution)
    placed = {}
    for key, value in batch.items():
        value = np.asarray(value)
        rows = value.shape[batch_axis] * jax.process_count()
        if rows % replicas:
            raise DistributionError(
                f"Batch of {rows} rows ({key!r}) is not divisible by the data-parallel degree {replicas}."
            )
        spec = [None] * value.ndim
        spec[batch_axis] = distribution.batch_dim_name
        sharding = NamedSharding(mesh.backend_mesh, PartitionSpec(*spec))
        placed[key] = jax.make_array_from_process_local_data(sharding, value)
    return placed


def report_unsharded(model, threshold_bytes=16 * 2**20):
    """Large variables left whole on every device under model parallel.

    Returns a list of `(path, shape, bytes)`; empty when no distribution
    with a `model` axis is set (data parallel replicates by design).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> report_unsharded(build_tiny_causal_lm("gemma3"))
    []
    """
    distribution = keras.distribution.distribution()
    if not isinstance(distribution, keras.distribution.ModelParallel):
        return []
    found = []
    for variable in model.variables:
        value = variable.value
        size = value.size * value.dtype.itemsize
        if size >= threshold_bytes and value.sharding.is_fully_replicated:
            found.append((variable.path, tuple(value.shape), int(size)))
    return found


def data_parallel_degree(distribution=None):
    """Rows of a batch must be a multiple of this (1 with no distribution).

    Example:
    >>> data_parallel_degree()
    1
    """
    distribution = distribution or keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return mesh.shape[mesh.axis_names.index(distribution.batch_dim_name)]


def pad_to_replicas(items, distribution=None):
    """Repeat the last item until the data-parallel degree divides the count.

    `CausalLM.generate` splits its prompts over the `batch` axis like any
    batch, and JAX refuses 2 prompts on 8 replicas (`IndivisibleError` in
    `jax.device_put`). Generate on the padded list and keep the first
    `count` outputs.

    Returns:
        `(padded_list, count)`.

    Example:
    >>> pad_to_replicas(["a", "b"])
    (['a', 'b'], 2)
    """
    items = list(items)
    replicas = data_parallel_degree(distribution)
    return items + items[-1:] * (-len(items) % replicas), len(items)

