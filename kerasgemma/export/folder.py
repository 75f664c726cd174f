"""Write an output folder atomically: build it beside the target, then rename.

A crash or an error halfway leaves the previous folder (or nothing) in place,
never a half-written one that transformers might load. An export only ever
replaces what an export made: a folder it wrote holds the marker
`kerasgemma.files.EXPORT_MARKER`; any other non-empty folder, the current
folder, and a folder holding the model's source are refused.

Scratch folders are named `.tmp-NAME.TAG-PID-RANDOM` beside the target; one
whose process is gone (a killed export) is deleted by the next export to the
same target. Folders are created with the user's umask, not 0700.
"""

import contextlib
import os
import re
import shutil
import uuid

from kerasgemma.errors import UserError
from kerasgemma.files import EXPORT_MARKER
from kerasgemma.files import TEMPORARY_PREFIX
from kerasgemma.run_lock import pid_alive

# What a refusal shows of a folder's contents.
_SHOWN_ENTRIES = 5


def is_export(folder):
    """True if `folder` was written by a kerasgemma export (it holds the marker).

    Example:
    >>> import tempfile
    >>> is_export(tempfile.mkdtemp())
    False
    """
    return os.path.isfile(os.path.join(folder, EXPORT_MARKER))


def _contains(outer, inner):
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_output_dir(output_dir, protect=(), overwrite=False):
    """Raise `UserError` unless `output_dir` may be (re)placed by an export.

    Args:
        output_dir: str or path. The folder the export will replace.
        protect: paths that must survive (the model's source); the current
            folder is always protected.
        overwrite: bool. Also replace a non-empty folder that is not a
            previous export.

    Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "notes.txt"), "w")
    >>> check_output_dir(folder)
    Traceback (most recent call last):
    ...
    kerasgemma.errors.UserError: ... is not empty and is not a kerasgemma export (it holds notes.txt); ...
    >>> check_output_dir(folder, overwrite=True)
    """
    target = os.path.realpath(output_dir)
    for path, what in [(os.getcwd(), "the current folder")] + [(p, f"the source {p}") for p in protect]:
        if _contains(target, os.path.realpath(path)):
            relation = "is" if os.path.realpath(path) == target else "contains"
            raise UserError(f"{output_dir} {relation} {what}; an export replaces its whole output folder, "
                            "so choose a new folder.")
    if os.path.lexists(target) and not os.path.isdir(target):
        raise UserError(f"{output_dir} is a file, not a folder; choose a folder name.")
    if os.path.isdir(target) and not overwrite and not is_export(target):
        entries = sorted(os.listdir(target))
        if entries:
            shown = ", ".join(entries[:_SHOWN_ENTRIES]) + (" …" if len(entries) > _SHOWN_ENTRIES else "")
            raise UserError(f"{output_dir} is not empty and is not a kerasgemma export (it holds {shown}); "
                            "choose another folder, or pass --overwrite to replace it.")


def scratch_folder(output_dir, tag):
    """Create and return an empty scratch folder beside `output_dir`, named for cleanup.

    Example:
    >>> import tempfile
    >>> path = scratch_folder(os.path.join(tempfile.mkdtemp(), "out"), "export")
    >>> os.path.basename(path).startswith(".tmp-out.export-" + str(os.getpid()))
    True
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    parent, name = os.path.split(output_dir)
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f"{TEMPORARY_PREFIX}{name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)  # mode 0o777 minus the umask (tempfile.mkdtemp would make it 0700)
    return path


def remove_stale_scratch(output_dir):
    """Delete the scratch folders of `output_dir` whose process is gone; returns their paths.

    Example:
    >>> import tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out")
    >>> mine = scratch_folder(target, "export")
    >>> remove_stale_scratch(target), os.path.isdir(mine)
    ([], True)
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    parent, name = os.path.split(output_dir)
    pattern = re.compile(rf"{re.escape(TEMPORARY_PREFIX + name)}\.[a-z]+-(\d+)-[0-9a-f]+")
    removed = []
    for entry in os.listdir(parent) if os.path.isdir(parent) else []:
        match = pattern.fullmatch(entry)
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(os.path.join(parent, entry))
    return removed


def current_umask():
    """The process umask (reading it means setting it: set and restore at once).

    Example:
    >>> previous = os.umask(0o027)
    >>> oct(current_umask())
    '0o27'
    >>> _ = os.umask(previous)
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder):
    """Give `folder` and everything in it the modes the umask gives new files and folders.

    Writers that go through a private temporary file (safetensors does)
    leave 0600 files; another account, such as a later upload step, could
    not read them.
    """
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_folder(output_dir, overwrite=False, protect=()):
    """Yield a scratch folder that replaces `output_dir` on success.

    Args:
        output_dir: str or path. The final folder.
        overwrite: bool. Also replace a non-empty folder that is not a
            previous export (`check_output_dir`).
        protect: paths the export must not delete (its source).

    Example:
    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out")
    >>> with atomic_folder(target) as scratch:
    ...     open(os.path.join(scratch, "a.txt"), "w").close()
    >>> sorted(os.listdir(target))
    ['.kerasgemma-export', 'a.txt']
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    check_output_dir(output_dir, protect=protect, overwrite=overwrite)
    remove_stale_scratch(output_dir)
    scratch = scratch_folder(output_dir, "export")
    try:
        yield scratch
        open(os.path.join(scratch, EXPORT_MARKER), "w").close()
        apply_umask(scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(output_dir):
        old = scratch_folder(output_dir, "old")
        os.replace(output_dir, old)
    os.replace(scratch, output_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)
