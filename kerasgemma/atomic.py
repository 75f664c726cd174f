"""Write files so that a reader never sees half of one: temporary name, then rename.

Every file kerasgemma writes goes through these helpers. The temporary file
sits in the target's folder (a rename across file systems is not atomic),
starts with `kerasgemma.files.TEMPORARY_PREFIX`, and is created with the
user's umask (`tempfile.mkstemp` would make it 0600).
"""

import contextlib
import json
import os
import uuid
from pathlib import Path

from kerasgemma.files import TEMPORARY_PREFIX


def temporary_path(path):
    """A fresh temporary path beside `path`: same folder, `.tmp-` prefix, same ending.

    The ending is kept because some writers choose the format by it
    (matplotlib's `.png`) or insist on it (Keras' `.lora.h5`).

    Example:
    >>> scratch = temporary_path("/x/adapter.lora.h5")
    >>> scratch.parent.as_posix(), scratch.name.startswith(".tmp-"), scratch.name.endswith("-adapter.lora.h5")
    ('/x', True, True)
    """
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary path; on success rename it to `path`, on error delete it.

    For writers that want a file name (h5py, matplotlib, numpy).

    Example:
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "x.bin"
    >>> with replacing(target) as scratch:
    ...     _ = scratch.write_bytes(b"ok")
    >>> target.read_bytes()
    b'ok'
    """
    path = Path(path)
    scratch = temporary_path(path)
    try:
        yield scratch
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    os.replace(scratch, path)


def write_text_atomic(path, text, sync=False):
    """Write `text` (UTF-8) to `path` atomically; `sync` also flushes it to disk.

    Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.txt"
    >>> write_text_atomic(path, "hello")
    >>> path.read_text()
    'hello'
    """
    with replacing(path) as scratch:
        with open(scratch, "w", encoding="utf-8") as file:
            file.write(text)
            if sync:
                file.flush()
                os.fsync(file.fileno())


def to_json(values):
    """JSON as kerasgemma writes it: sorted keys, indented, UTF-8 text kept.

    Example:
    >>> print(to_json({"b": 1, "a": "中"}))
    {
      "a": "中",
      "b": 1
    }
    """
    return json.dumps(values, indent=2, sort_keys=True, ensure_ascii=False)


def write_json_atomic(path, values, sync=False):
    """Write `values` as JSON (`to_json`) to `path` atomically.

    Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.json"
    >>> write_json_atomic(path, {"rank": 4})
    >>> json.loads(path.read_text())
    {'rank': 4}
    """
    write_text_atomic(path, to_json(values) + "\n", sync=sync)


def read_json(path):
    """The JSON value stored in `path`."""
    with open(path, encoding="utf-8") as file:
        return json.load(file)
