"""Write an output folder atomically: build it beside the target, then rename.

A crash or an error halfway leaves the previous folder (or nothing) in place,
never a half-written one that transformers might load.
"""

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_folder(output_dir, overwrite=True):
    """Yield a scratch folder that replaces `output_dir` on success.

    Args:
        output_dir: str or path. The final folder.
        overwrite: bool. Replace an existing `output_dir` (else raise).

    Example:
    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out")
    >>> with atomic_folder(target) as scratch:
    ...     open(os.path.join(scratch, "a.txt"), "w").close()
    >>> os.listdir(target)
    ['a.txt']
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True.")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(output_dir), dir=parent)
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    old = None
    if os.path.exists(output_dir):
        old = scratch + ".old"
        os.replace(output_dir, old)
    os.replace(scratch, output_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)
