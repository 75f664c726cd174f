"""The free-space check before an export: a real size estimate, and an early one-line refusal."""

import collections
import os

import pytest

from kerasgemma.errors import UserError
from kerasgemma.export import space
from kerasgemma.export.adapter import export_adapter
from kerasgemma.export.merged import export_merged
from kerasgemma.export.pipeline import export_and_verify
from helpers import lora_model

Usage = collections.namedtuple("Usage", "total used free")


def _folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


@pytest.fixture(scope="module")
def lm():
    return lora_model("gemma3")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merged_estimate_covers_the_folder_written(lm, tmp_path, dtype):
    estimate, what = space.export_bytes(lm, dtype=dtype)
    folder = export_merged(lm, tmp_path / "hf", dtype=dtype)
    written = _folder_bytes(folder)
    weights = space.weights_bytes(lm.backbone, dtype)
    # The weights are exact; the tokenizer allowance is an upper bound, and
    # the few small json files fit in the headroom the check adds.
    assert weights < written <= estimate + space.HEADROOM_BYTES
    assert what.startswith(f"merged {dtype} weights + tokenizer")


def test_adapter_estimate_counts_the_base_folder_verification_writes(lm, tmp_path):
    adapter_only, _ = space.export_bytes(lm, adapter_only=True, verify=False)
    folder = export_adapter(lm, tmp_path / "adapter", "base")
    assert adapter_only == space.lora_bytes(lm.backbone) <= _folder_bytes(folder)
    with_base, what = space.export_bytes(lm, adapter_only=True, dtype="bfloat16", verify=True)
    assert with_base == adapter_only + space.export_bytes(lm, dtype="bfloat16")[0]
    assert "base folder it is verified on" in what


def test_export_refuses_early_with_needed_and_free_bytes(lm, tmp_path, monkeypatch):
    needed, _ = space.export_bytes(lm, dtype="bfloat16", verify=False)
    free = needed + space.HEADROOM_BYTES - 1
    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - free, free))
    output = tmp_path / "not-yet" / "hf"
    with pytest.raises(UserError) as caught:
        export_and_verify(lm, str(output), verify=False, progress=False, log=lambda line: None)
    message = str(caught.value)
    assert "\n" not in message
    assert f"needs {(needed + space.HEADROOM_BYTES) / 1e9:.2f} GB" in message
    assert f"{free / 1e9:.2f} GB free in {tmp_path}." in message  # the nearest folder that exists
    assert not output.parent.exists()  # refused before anything was written

    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: Usage(10**12, 0, free + 1))
    folder, _ = export_and_verify(lm, str(output), verify=False, progress=False, log=lambda line: None)
    assert os.path.isdir(folder)
