"""The one exception a user can fix (bad settings, files or paths), and the two ways training stops early.

Commands print a `UserError` as one line and exit with status 2 (a
traceback only with `--debug`); anything else is a bug and keeps its
traceback. `TrainingDiverged` and `TrainingInterrupted` are raised by
`kerasgemma.training.loop`; they live here, with no heavy import, so the
command line can catch them without importing JAX or Keras first.

Example:
>>> str(UserError("run.yaml: lora_rank must be a positive integer, got 'abc'"))
"run.yaml: lora_rank must be a positive integer, got 'abc'"
"""

import signal


class UserError(ValueError):
    """A problem with the user's input, described in one line that says what to change."""


EXIT_USER_ERROR = 2


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (also a `FileNotFoundError`)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a whole step, whose checkpoint was saved.

    Args:
        signum: int. The signal received.
        step: int. The last step run (and saved).
        checkpoint: pathlib.Path. The checkpoint of that step.
    """

    def __init__(self, signum, step, checkpoint):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; saved {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
