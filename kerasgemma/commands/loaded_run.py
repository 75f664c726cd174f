"""A finished run folder back in memory, for the commands that use its model (`chat`, `eval`).

`kerasgemma.run.load_run` rebuilds the run exactly as it trained (its data,
hence a tiny preset's tokenizer, its LoRA settings) and loads the newest good
checkpoint. Its progress lines go to stderr, so that stdout carries only
the command's own output (answers, a table, JSON).
"""

import contextlib
import sys

from kerasgemma.run import load_run


def add_run_argument(parser):
    """Add the RUN_DIR positional to `parser`.

    Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_run_argument(parser)
    >>> parser.parse_args(["runs/x"]).run_dir
    'runs/x'
    """
    parser.add_argument("run_dir", help="A run folder (printed by `kerasgemma train`): its newest good "
                        "checkpoint is used.")


def load_run_to_stderr(run_dir):
    """`load_run(run_dir)` with everything it prints sent to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        return load_run(run_dir, progress=False)
