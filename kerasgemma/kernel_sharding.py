"""Custom attention kernels under a keras distribution that spans several devices.

XLA cannot partition a Pallas kernel: on a TPU jax raises "Mosaic kernels
cannot be automatically partitioned. Please wrap the call in a shard_map",
and a Triton kernel on several GPUs is a custom call XLA would run whole on
every device. `over_devices` runs the kernel inside `jax.shard_map` instead:
rows are split over the distribution's batch axis; heads over the other mesh
axes where both head counts divide their size (or the single key/value head
is copied to every device), else every device of those axes computes all
heads of its rows.
"""

import math

import jax
import keras
from jax.sharding import PartitionSpec


def over_devices(rows, query_heads, kv_heads, head_axis):
    """`rows(query, key, value, segment_ids)` under `jax.shard_map` when a keras distribution spans several devices.

    Args:
        rows: the kernel over whole rows: query, key, value arrays with the
            batch first and their heads at `head_axis`, and `(batch, ...)`
            segment ids; returns an array laid out like `query`.
        query_heads: int, the query's head count.
        kv_heads: int, the keys' and values' head count.
        head_axis: int, the heads' axis in query, key, value and the output.

    Example (no distribution: `rows` itself):
    >>> rows = lambda q, k, v, ids: q
    >>> over_devices(rows, 8, 1, head_axis=2) is rows
    True
    """
    distribution = keras.distribution.distribution()
    if distribution is None or distribution.device_mesh.devices.size == 1:
        return rows
    mesh = distribution.device_mesh
    batch_axis = distribution.batch_dim_name
    head_axes = tuple(axis for axis in mesh.axis_names if axis != batch_axis)
    head_devices = math.prod(mesh.shape[mesh.axis_names.index(axis)] for axis in head_axes)
    query_split = head_axes if query_heads % head_devices == 0 and (kv_heads == 1 or kv_heads % head_devices == 0) else None
    kv_split = query_split if kv_heads % head_devices == 0 else None
    between = (None,) * (head_axis - 1)
    q_spec = PartitionSpec(batch_axis, *between, query_split or None)
    kv_spec = PartitionSpec(batch_axis, *between, kv_split or None)
    return jax.shard_map(
        rows, mesh=mesh.backend_mesh, in_specs=(q_spec, kv_spec, kv_spec, PartitionSpec(batch_axis)),
        out_specs=q_spec, check_vma=False,
    )
