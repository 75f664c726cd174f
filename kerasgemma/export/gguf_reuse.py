"""Let transformers' GGUF loader reuse a GGUF file already parsed.

Parsing a GGUF's metadata with the `gguf` package reads every vocabulary
entry one field at a time: about 30 s on 2 CPU cores for Gemma 3's
262,144 tokens, whatever the model's size. transformers' GGUF loader
(`load_gguf_checkpoint`) parses the file again on every call: once for the
config, once for the weights, once more for a tokenizer. Inside
`reusing_gguf_reader(reader)` those calls get the reader already open
(read-only: it is a memory map of the file), so a GGUF check parses its
file once.

TRANSFORMERS INTERNALS: this relies on transformers 5.x's
`modeling_gguf_pytorch_utils.load_gguf_checkpoint` looking the class up at
call time (`from gguf import GGUFReader` inside the function). If a
transformers upgrade imports it once at module level instead, it parses the
file again: slower, same result.
"""

import contextlib
import os


@contextlib.contextmanager
def reusing_gguf_reader(reader):
    """Inside the block, `gguf.GGUFReader(path)` on `reader`'s file returns `reader` itself.

    Other files, and other modes than read-only, are opened as usual.

    Example:
    >>> import tempfile, gguf, numpy as np
    >>> path = tempfile.mkdtemp() + "/m.gguf"
    >>> writer = gguf.GGUFWriter(path, "gemma3")
    >>> writer.add_tensor("t", np.ones(4, np.float32))
    >>> writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    >>> reader = gguf.GGUFReader(path)
    >>> with reusing_gguf_reader(reader):
    ...     gguf.GGUFReader(path) is reader
    True
    >>> gguf.GGUFReader(path) is reader
    False
    """
    import gguf

    original = gguf.GGUFReader
    own_file = os.path.realpath(reader.data.filename)

    class Reused(original):
        # `__new__` returns an object that is not a `Reused`, so Python
        # never calls `__init__` on it again.
        def __new__(cls, path, mode="r"):
            if mode == "r" and os.path.realpath(path) == own_file:
                return reader
            return original(path, mode)

    gguf.GGUFReader = Reused
    try:
        yield reader
    finally:
        gguf.GGUFReader = original
