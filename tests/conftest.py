"""Fixtures shared by the test modules, and the `slow` marker policy.

Markers (registered in pyproject.toml):
    slow: end-to-end runs, real-model tests, benchmark smoke runs, notebooks,
        subprocess meshes, and docstring examples that do full Hugging Face
        exports. `make test-fast` (`pytest -m "not slow"`) skips them and is
        meant to finish in a few minutes on 2 CPU cores; `make test` (CI,
        `.ci/run`) runs everything. Mark a test slow when it takes more than
        ~10 s on its own and a faster test already covers the same code.

Order: slow tests run first. With several workers (`make test` runs
pytest-xdist, handing out one test or group at a time) the minutes-long ones then
start at once, in parallel, instead of one of them keeping a single worker
busy after the others have finished.

Plain helpers (the Hub stand-in, LoRA export cases, subcommand parsing) are
in tests/helpers.py; test modules must not import each other.
"""

import atexit
import os
import shutil
import tempfile

# XLA:CPU with most optimizations off (`jax_disable_most_optimizations`:
# backend optimization level 0 and no expensive LLVM passes): the suite
# compiles hundreds of tiny programs and runs each a few times, so code
# generation, not execution, is its cost. Tests that run the real Gemma 3
# 270M execute more than they compile (its preset load alone initialises
# 268M random weights: 29 s instead of 13 s at -O0) and turn the
# optimizations back on with `helpers.optimized_xla()`. Set through the
# environment so that subprocesses (CLI, notebooks, meshes) inherit it;
# numerics: same ops, same float32 arithmetic, and the tests compare within
# tolerances or within one process.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# One XLA compilation cache for the whole test session, shared by the
# pytest-xdist workers and every subprocess they start (the CLI, demo and
# notebook tests): many tests compile the same tiny programs (a `tiny:gemma`
# train step, its generation), and a program compiled once is then read
# back instead of compiled again. Created by the first pytest process (the
# xdist controller, whose environment the workers inherit) and removed when
# it exits, so every session starts cold, as CI does. A size limit turns on
# JAX's file lock, so two workers never read an entry half written. Only
# programs that took 0.2 s or more to compile are stored: eager JAX compiles
# each op of a forward on its own (milliseconds each), and writing and
# looking up those thousands of entries cost more than compiling them
# (tests/test_data_packing.py's fast tests: 45 s with every entry, 36 s).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="kerasgemma-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_cache_dir,
        JAX_COMPILATION_CACHE_MAX_SIZE=str(4 << 30),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )

# One kerasgemma cache (`$KERASGEMMA_CACHE`: the real Gemma 3 270M preset
# built from its PyPI packages) for the whole test session, never the user's
# ~/.cache/kerasgemma: every session builds the preset once, from the
# packages, as CI does, and the tests cannot touch the user's cache. Created
# by the first pytest process like the XLA cache; the `offline_preset`
# fixture builds it under a file lock, so the worker that comes second waits.
# Subprocesses (the real-model demo) inherit it and find the preset built.
if "KERASGEMMA_TEST_SESSION_CACHE" not in os.environ:
    _session_cache = tempfile.mkdtemp(prefix="kerasgemma-tests-cache-")
    atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)
    os.environ["KERASGEMMA_TEST_SESSION_CACHE"] = _session_cache
os.environ["KERASGEMMA_CACHE"] = os.environ["KERASGEMMA_TEST_SESSION_CACHE"]

import fcntl  # noqa: E402

import gguf  # noqa: E402
import pytest  # noqa: E402
from helpers import TOKEN, HubStandIn, optimized_xla, write_sum_rows

from kerasgemma.config import TrainConfig
from kerasgemma.export.gguf_reuse import reusing_gguf_reader
from kerasgemma.offline import OFFLINE_PRESET_NAME, build_offline_preset, gguf_path
from kerasgemma.offline.preset import is_complete_preset
from kerasgemma.run import train
from kerasgemma.tiny import build_tiny_causal_lm, build_tiny_tokenizer_proto


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def shared_tiny_lm():
    """`shared_tiny_lm(architecture)`: one tiny causal LM per architecture for the whole session.

    Read-only: do not `enable_lora`, train, or assign weights to it (build your
    own with `kerasgemma.tiny.build_tiny_causal_lm` for that). Context managers
    that restore the model on exit (`packed_attention`) are fine.
    """
    models = {}

    def get(architecture="gemma3"):
        if architecture not in models:
            models[architecture] = build_tiny_causal_lm(architecture)
        return models[architecture]

    return get


@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory):
    """A finished two-step `tiny:gemma` run on 12 rows (`helpers.write_sum_rows`), for the whole session.

    About 20 s of training on 2 cores: use it from slow tests (or make the
    test slow). Read-only: do not train it further or change its folder;
    its `Run` holds the model as trained (what `load_run` brings back).
    """
    folder = tmp_path_factory.mktemp("trained_tiny_run")
    config = TrainConfig(preset="tiny:gemma", data=str(write_sum_rows(folder / "rows.jsonl")), sequence_length=48,
                         batch_size=2, validation_fraction=0.2, learning_rate=1e-2, max_steps=2,
                         max_new_tokens=4, output_dir=str(folder / "runs"))
    return train(config, progress=False)


@pytest.fixture(scope="session")
def offline_gguf_reader():
    """The session cache's real Gemma 3 270M GGUF, parsed once per worker.

    Parsing takes about 25 s on 2 cores: `gguf` reads the 262k-entry
    vocabulary one field at a time. Read it inside
    `kerasgemma.export.gguf_reuse.reusing_gguf_reader(reader)` and the
    preset build, transformers' GGUF loader and the tokenizer rebuild all
    take this one instead of parsing the file again.
    """
    return gguf.GGUFReader(gguf_path(os.environ["KERASGEMMA_CACHE"]))


@pytest.fixture(scope="session")
def offline_preset(request):
    """The real Gemma 3 270M preset's folder, built once per test session into `$KERASGEMMA_CACHE`.

    The first worker to ask builds it (about a minute, from
    `offline_gguf_reader`) while any other waits on the lock; afterwards
    `kerasgemma` subprocesses find it there too.
    """
    cache_dir = os.environ["KERASGEMMA_CACHE"]
    with open(os.path.join(cache_dir, ".tests-build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete_preset(os.path.join(cache_dir, OFFLINE_PRESET_NAME)):
            return build_offline_preset(cache_dir, progress=False)  # returns at once
        with optimized_xla(), reusing_gguf_reader(request.getfixturevalue("offline_gguf_reader")):
            return build_offline_preset(cache_dir, progress=False)


@pytest.fixture(scope="session")
def tiny_proto():
    """The default tiny SentencePiece model (bytes; memoised in kerasgemma.tiny anyway)."""
    return build_tiny_tokenizer_proto()


@pytest.fixture
def standin(monkeypatch):
    """A local Hugging Face Hub stand-in with HF_TOKEN set to the test token."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubStandIn() as server:
        yield server
