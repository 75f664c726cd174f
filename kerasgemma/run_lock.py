"""One process at a time per run folder: `train`, `resume` and `export` hold its lock.

The lock is the file `kerasgemma.files.RUN_LOCK` in the run folder, holding
the pid, host and command of its holder. It appears with its content in one
step (written beside it, then hard-linked into place, which fails if the lock
exists), so another process never reads an empty lock. A lock whose pid is
dead on this host is stale (a `kill -9`) and is taken over.

Example:
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> with run_lock(folder, "resume"):
...     with run_lock(folder, "export"):
...         pass
Traceback (most recent call last):
...
kerasgemma.errors.UserError: ... is in use by `kerasgemma resume` (pid ...
"""

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from kerasgemma.atomic import temporary_path
from kerasgemma.atomic import to_json
from kerasgemma.errors import UserError
from kerasgemma.files import RUN_LOCK


def _holder(path):
    """The lock's content, or None if it is unreadable (then it is stale)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pid_alive(pid):
    """True if process `pid` exists on this host.

    Example:
    >>> pid_alive(os.getpid())
    True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_stale(holder):
    # A lock from another host cannot be checked: it is never stale here.
    if holder is None:
        return True
    return holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", 0)))


def _try_create(path, content):
    """Create `path` holding `content` in one step; False if it exists."""
    scratch = temporary_path(path)
    scratch.write_text(content, encoding="utf-8")
    try:
        os.link(scratch, path)
    except FileExistsError:
        return False
    finally:
        scratch.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def run_lock(run_dir, command):
    """Hold the lock of `run_dir` for the `with` block, or raise `UserError` naming its holder."""
    path = Path(run_dir) / RUN_LOCK
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
    try:
        created = _try_create(path, to_json(mine))
        if not created and _is_stale(_holder(path)):
            path.unlink(missing_ok=True)
            created = _try_create(path, to_json(mine))
    except OSError as error:
        raise UserError(f"cannot lock {run_dir}: {error.strerror}") from error
    if not created:
        holder = _holder(path) or {}
        raise UserError(
            f"{run_dir} is in use by `kerasgemma {holder.get('command', '?')}` (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}); wait for it to finish, or delete {path} if that process is gone."
        )
    try:
        yield path
    finally:
        if _holder(path) == mine:
            path.unlink(missing_ok=True)
