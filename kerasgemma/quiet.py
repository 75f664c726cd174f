"""Keep TensorFlow's, XLA's and SentencePiece's start-up lines off the terminal.

kerasgemma never uses TensorFlow itself, but keras-hub's tokenizers import
`tensorflow_text`, which imports `tensorflow`. TensorFlow 2.21 then writes
`oneDNN custom operations are on…` and `cudart_stub… Could not find cuda
drivers` to file descriptor 2 from C++, *before* absl logging is
initialised, so neither `TF_CPP_MIN_LOG_LEVEL` nor absl's verbosity hides
them (docs/facts.md#quiet-start-up). `quiet_startup()` therefore:

- sets `TF_CPP_MIN_LOG_LEVEL=3` (still honoured by XLA: it hides jax's
  `failed call to cuInit` on a machine without a GPU),
- runs the first `import tensorflow`, whoever triggers it and whenever, with
  file descriptor 2 pointed at a temporary file (`SilentImport`); what was
  written there is replayed if that import fails, so a broken install still
  explains itself,
- lowers SentencePiece's C++ log level to warnings
  (`normalizer.cc LOG(INFO) precompiled_charsmap is empty`).

Nothing is imported here: a command that never needs a tokenizer never pays
for TensorFlow.

Example:
>>> import sys
>>> finder = SilentImport(("a_module_that_does_not_exist",))
>>> finder.find_spec("a_module_that_does_not_exist", None) is None
True
"""

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile

import sentencepiece

# Top-level modules whose first import prints native start-up noise.
NOISY_MODULES = ("tensorflow",)


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at a temporary file; on an exception, copy what it caught to stderr.

    Example:
    >>> with native_stderr_silenced():
    ...     _ = os.write(2, b"not shown")
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            caught.seek(0)
            os.write(2, caught.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _SilentLoader(importlib.abc.Loader):
    """Wraps a module's real loader so that executing it runs under `native_stderr_silenced`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with native_stderr_silenced():
            self.loader.exec_module(module)


class SilentImport(importlib.abc.MetaPathFinder):
    """A `sys.meta_path` finder that imports `names` (top-level modules) with native stderr silenced."""

    def __init__(self, names=NOISY_MODULES):
        self.names = tuple(names)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _SilentLoader(spec.loader)
        return spec


def quiet_startup():
    """Hide TensorFlow/XLA/SentencePiece start-up lines for the rest of this process (see module doc).

    Call it before anything imports TensorFlow (the CLI does, first thing,
    unless `--verbose`). Idempotent; explicit `TF_CPP_MIN_LOG_LEVEL` settings
    are kept.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not any(isinstance(finder, SilentImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, SilentImport())
    sentencepiece.set_min_log_level(1)
