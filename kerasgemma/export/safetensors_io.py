"""Write tensors into size-limited safetensors shards, one tensor at a time.

At most one shard's worth of tensors is held in host memory: each tensor is
cast to the output dtype as it arrives and the shard is flushed to disk as
soon as the next tensor would overflow it. The file names and the index
follow transformers' own sharded checkpoints.
"""

import json
import os
import re

import ml_dtypes
import numpy as np
from safetensors import numpy as safetensors_numpy

from kerasgemma.atomic import write_json_atomic
from kerasgemma.files import SAFETENSORS_INDEX as INDEX_FILE
from kerasgemma.files import SAFETENSORS_SINGLE as SINGLE_FILE

DTYPES = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10,
          "MIB": 2**20, "GIB": 2**30}


def parse_size(size):
    """Bytes in a size like 2GB, "500MB", "1.5GiB" or an int.

    Units are decimal (GB = 10**9) like transformers' `max_shard_size`.

    Example:
    >>> parse_size("2GB"), parse_size("1MiB"), parse_size(1000)
    (2000000000, 1048576, 1000)
    """
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(size))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS and unit != "":
        raise ValueError(
            f"Cannot read size {size!r}; use e.g. '2GB', '500MB', '1GiB' or bytes."
        )
    return int(float(match.group(1)) * _UNITS[unit or "B"])


def cast(array, dtype):
    """`array` as `dtype` ("float32", "bfloat16", "float16"), C-contiguous.

    Example:
    >>> cast(np.array([1.0, 2.5], np.float32), "bfloat16").dtype.name
    'bfloat16'
    >>> cast(np.array(1.0), "float32").shape
    ()
    """
    if dtype not in DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}; choose from {list(DTYPES)}.")
    target = DTYPES[dtype]
    if array.dtype != target:
        array = array.astype(target)
    # np.ascontiguousarray makes a 0-d array 1-d; transformers' scalar
    # buffers (Gemma 4's clipping bounds) must stay 0-d.
    return np.ascontiguousarray(array).reshape(array.shape)


def write_sharded(tensors, output_dir, dtype="bfloat16", max_shard_size="2GB"):
    """Write `(name, array)` pairs into safetensors shards under `output_dir`.

    One `model.safetensors` when everything fits in one shard, otherwise
    `model-0000k-of-0000n.safetensors` files plus `model.safetensors.index.json`.
    A tensor larger than the shard size gets a shard of its own.

    Args:
        tensors: iterable of (str, numpy array). Consumed lazily.
        output_dir: str or path. Existing folder to write into.
        dtype: str. Output dtype of every tensor.
        max_shard_size: int or str. Largest shard size, e.g. "2GB".

    Returns:
        dict `{tensor name: file name}`.

    Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> pairs = [("a", np.zeros((4, 4), np.float32)), ("b", np.ones(8, np.float32))]
    >>> sorted(set(write_sharded(pairs, folder, "float32", 64).values()))
    ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    """
    limit = parse_size(max_shard_size)
    shard, shard_bytes, shard_files, weight_map = {}, 0, [], {}

    def flush():
        path = os.path.join(output_dir, f".shard-{len(shard_files)}.tmp")
        safetensors_numpy.save_file(shard, path, metadata={"format": "pt"})
        shard_files.append(path)
        for name in shard:
            weight_map[name] = len(shard_files) - 1

    total = 0
    for name, array in tensors:
        if name in weight_map or name in shard:
            raise ValueError(f"Tensor {name!r} written twice.")
        array = cast(array, dtype)
        if shard and shard_bytes + array.nbytes > limit:
            flush()
            shard, shard_bytes = {}, 0
        shard[name] = array
        shard_bytes += array.nbytes
        total += array.nbytes
    if shard:
        flush()
    del shard

    count = len(shard_files)
    names = (
        [SINGLE_FILE]
        if count == 1
        else [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)]
    )
    for path, name in zip(shard_files, names):
        os.replace(path, os.path.join(output_dir, name))
    weight_map = {tensor: names[k] for tensor, k in weight_map.items()}
    if count > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_json_atomic(os.path.join(output_dir, INDEX_FILE), index)
    return weight_map


def read_weight_map(folder):
    """`{tensor name: file name}` of a folder written by `write_sharded`.

    Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_sharded([("a", np.zeros(2, np.float32))], folder, "float32")
    >>> read_weight_map(folder)
    {'a': 'model.safetensors'}
    """
    index_path = os.path.join(folder, INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            return json.load(f)["weight_map"]
    from safetensors import safe_open

    with safe_open(os.path.join(folder, SINGLE_FILE), framework="np") as f:
        return {name: SINGLE_FILE for name in f.keys()}
