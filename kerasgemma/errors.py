"""The one exception a user can fix: bad settings, files or paths.

Commands print a `UserError` as one line and exit with status 2 (a
traceback only with `--debug`); anything else is a bug and keeps its
traceback.

Example:
>>> str(UserError("run.yaml: lora_rank must be a positive integer, got 'abc'"))
"run.yaml: lora_rank must be a positive integer, got 'abc'"
"""


class UserError(ValueError):
    """A problem with the user's input, described in one line that says what to change."""


EXIT_USER_ERROR = 2


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (also a `FileNotFoundError`)."""
