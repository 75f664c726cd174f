"""The real Gemma 3 270M, built offline from its PyPI packages.

Example:
>>> from kerasgemma.offline import OFFLINE_PRESET_NAME
>>> OFFLINE_PRESET_NAME
'gemma3_270m_pt'
"""

from kerasgemma.offline.gguf_file import gguf_path
from kerasgemma.offline.preset import OFFLINE_PRESET_NAME
from kerasgemma.offline.preset import build_offline_preset
from kerasgemma.offline.tokenizer import sentencepiece_proto_from_gguf

__all__ = [
    "OFFLINE_PRESET_NAME",
    "build_offline_preset",
    "gguf_path",
    "sentencepiece_proto_from_gguf",
]
