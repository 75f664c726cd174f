"""Export Keras Gemma models to Hugging Face: merged folder, PEFT adapter, checks.

Example:
>>> import tempfile
>>> from kerasgemma.tiny import build_tiny_causal_lm
>>> from kerasgemma.export import export_merged, verify_export
>>> lm = build_tiny_causal_lm("gemma3")
>>> folder = export_merged(lm, tempfile.mkdtemp() + "/hf")
>>> verify_export(lm, folder, max_new_tokens=4, check_mlx=False).passed
True
"""

import importlib

# `hf_config` is also this package's submodule name: imported eagerly, so the
# function, not the module, is what `kerasgemma.export.hf_config` names.
from kerasgemma.export.hf_config import detect_architecture, hf_config

# Loaded on first use (PEP 562), as in `kerasgemma/__init__.py`: a leaf module
# of this package (e.g. `gguf_layout`, which `kerasgemma.offline` reads GGUF
# files with) must be importable without the verification stack, which
# imports `kerasgemma.model` and, through it, `kerasgemma.offline` again.
_PUBLIC = {
    "export_adapter": "kerasgemma.export.adapter",
    "export_merged": "kerasgemma.export.merged",
    "VerificationReport": "kerasgemma.export.verify",
    "read_report": "kerasgemma.export.verify",
    "verify_export": "kerasgemma.export.verify",
}


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'kerasgemma.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "VerificationReport",
    "detect_architecture",
    "export_adapter",
    "export_merged",
    "hf_config",
    "read_report",
    "verify_export",
]
