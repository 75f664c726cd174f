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

from kerasgemma.lazy import lazy_names

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


__getattr__, __dir__ = lazy_names("kerasgemma.export", _PUBLIC, globals())


__all__ = [
    "VerificationReport",
    "detect_architecture",
    "export_adapter",
    "export_merged",
    "hf_config",
    "read_report",
    "verify_export",
]
