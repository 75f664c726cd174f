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

from kerasgemma.export.adapter import export_adapter
from kerasgemma.export.hf_config import detect_architecture, hf_config
from kerasgemma.export.merged import export_merged
from kerasgemma.export.verify import VerificationReport, read_report, verify_export

__all__ = [
    "VerificationReport",
    "detect_architecture",
    "export_adapter",
    "export_merged",
    "hf_config",
    "read_report",
    "verify_export",
]
