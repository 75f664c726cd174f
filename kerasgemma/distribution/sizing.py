"""How big a Gemma model is, from its preset's config, before it is built.

The strategy must be chosen before the model exists (variables are created
sharded), so the size comes from `config.json` — a few hundred bytes even for
a Kaggle or Hugging Face preset — not from the weights.
"""

from keras_hub.src.utils.preset_utils import CONFIG_FILE
from keras_hub.src.utils.preset_utils import load_json

from kerasgemma.distribution.strategy import DistributionError
from kerasgemma.model import OFFLINE_PRESET
from kerasgemma.model import TINY_PREFIX
from kerasgemma.model import preset_error
from kerasgemma.offline import build_offline_preset
from kerasgemma.tiny import tiny_backbone_config

# Bytes per weight; mixed policies keep float32 variables.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "mixed_bfloat16": 4, "mixed_float16": 4}
ARCHITECTURE_OF_CLASS = {"GemmaBackbone": "gemma", "Gemma3Backbone": "gemma3"}


def count_parameters(backbone_config, architecture):
    """Weights of a Gemma text backbone from its config, without building it.

    Args:
        backbone_config: dict. `GemmaBackbone`/`Gemma3Backbone` config.
        architecture: str. "gemma", "gemma2" or "gemma3".

    Example:
    >>> from kerasgemma.tiny import tiny_backbone_config
    >>> count_parameters(tiny_backbone_config("gemma", 546), "gemma")
    28896
    """
    c = backbone_config
    hidden, head_dim = c["hidden_dim"], c["head_dim"]
    heads, kv_heads = c["num_query_heads"], c["num_key_value_heads"]
    # keras-hub's Gemma 1/2 config gives intermediate_dim as twice each FFW
    # kernel's width (ffw_gating is (hidden, intermediate_dim / 2)); Gemma 3's
    # gives the width itself.
    ffw = c["intermediate_dim"] if architecture == "gemma3" else c["intermediate_dim"] // 2
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    norms = hidden * (2 + bool(c.get("use_post_attention_norm")) + bool(c.get("use_post_ffw_norm")))
    norms += 2 * head_dim * bool(c.get("use_query_key_norm"))
    return c["vocabulary_size"] * hidden + c["num_layers"] * (attention + 3 * hidden * ffw + norms) + hidden


def estimate_param_bytes(backbone_config, architecture, dtype):
    """Bytes of the weights in `dtype` (see `count_parameters`).

    Example:
    >>> from kerasgemma.tiny import tiny_backbone_config
    >>> estimate_param_bytes(tiny_backbone_config("gemma", 546), "gemma", "bfloat16")
    57792
    """
    if dtype not in DTYPE_BYTES:
        raise DistributionError(f"Unknown dtype {dtype!r}; expected one of {sorted(DTYPE_BYTES)}.")
    return count_parameters(backbone_config, architecture) * DTYPE_BYTES[dtype]


def preset_backbone_config(preset):
    """`(architecture, backbone config)` of a preset, reading only its config.

    Args:
        preset: str. Any preset `kerasgemma.model.load_causal_lm` takes.

    Example:
    >>> architecture, config = preset_backbone_config("tiny:gemma3")
    >>> architecture, config["num_layers"]
    ('gemma3', 2)
    """
    if preset.startswith(TINY_PREFIX):
        architecture = preset[len(TINY_PREFIX) :]
        # The tiny tokenizer's size depends on its training text; ~600 is
        # its usual size and the weights are a few hundred KB either way.
        config = tiny_backbone_config(architecture, 600)
        return ("gemma" if architecture == "gemma2" else architecture), config
    if preset == OFFLINE_PRESET:
        preset = build_offline_preset()
    try:
        saved = load_json(preset, CONFIG_FILE)
    except ValueError as error:
        raise preset_error(preset, error) from error
    class_name = saved["class_name"]
    if class_name not in ARCHITECTURE_OF_CLASS:
        raise DistributionError(f"{preset}: backbone {class_name} is not a Gemma text backbone we can lay out.")
    return ARCHITECTURE_OF_CLASS[class_name], saved["config"]
