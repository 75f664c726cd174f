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
ARCHITECTURE_OF_CLASS = {"GemmaBackbone": "gemma", "Gemma3Backbone": "gemma3", "Gemma4Backbone": "gemma4"}

# Text backbone configs of the Gemma 4 presets, so a run can be sized from a
# preset name without downloading anything. The dimensions are those of
# Google's published configs; `count_parameters` of each plus its vision and
# audio towers gives keras-hub's `gemma4_presets.py` metadata `params`
# (tests/test_gemma4_training.py checks within 12%: the towers are the rest).
_GEMMA4_COMMON = dict(
    vocabulary_size=262144, image_size=896, head_dim=256, global_head_dim=512, sliding_window_size=512,
    global_rope_partial_rotary_factor=0.25, final_logit_soft_cap=30.0,
)
GEMMA4_TEXT_CONFIGS = {
    # E2B: per-layer embeddings, the last 20 layers reuse K/V and are double-wide.
    "gemma4_2b": dict(
        _GEMMA4_COMMON, num_layers=35, hidden_dim=1536, intermediate_dim=6144, num_query_heads=8,
        num_key_value_heads=1, sliding_window_pattern=5, num_kv_shared_layers=20,
        hidden_size_per_layer_input=256, use_double_wide_mlp=True,
    ),
    "gemma4_4b": dict(
        _GEMMA4_COMMON, num_layers=42, hidden_dim=2560, intermediate_dim=10240, num_query_heads=8,
        num_key_value_heads=2, sliding_window_pattern=6, num_kv_shared_layers=18,
        hidden_size_per_layer_input=256,
    ),
    "gemma4_26b_a4b": dict(
        _GEMMA4_COMMON, num_layers=30, hidden_dim=2816, intermediate_dim=2112, num_query_heads=16,
        num_key_value_heads=8, num_global_key_value_heads=2, sliding_window_size=1024, sliding_window_pattern=6,
        enable_moe_block=True, num_experts=128, expert_intermediate_dim=704, num_experts_per_token=8,
    ),
    "gemma4_31b": dict(
        _GEMMA4_COMMON, num_layers=60, hidden_dim=5376, intermediate_dim=21504, num_query_heads=32,
        num_key_value_heads=16, num_global_key_value_heads=4, sliding_window_size=1024, sliding_window_pattern=6,
    ),
}
# Gemma 1 configs (keras-hub's gemma_2b_en / gemma_7b_en config.json), so
# the common presets are sized, and `kerasgemma plan` runs, offline.
GEMMA_TEXT_CONFIGS = {
    "gemma_2b_en": dict(
        vocabulary_size=256000, num_layers=18, num_query_heads=8, num_key_value_heads=1, hidden_dim=2048,
        intermediate_dim=32768, head_dim=256,
    ),
    "gemma_7b_en": dict(
        vocabulary_size=256000, num_layers=28, num_query_heads=16, num_key_value_heads=16, hidden_dim=3072,
        intermediate_dim=49152, head_dim=256,
    ),
}
GEMMA_TEXT_CONFIGS["gemma_instruct_2b_en"] = GEMMA_TEXT_CONFIGS["gemma_2b_en"]
GEMMA_TEXT_CONFIGS["gemma_instruct_7b_en"] = GEMMA_TEXT_CONFIGS["gemma_7b_en"]
for _size in list(GEMMA4_TEXT_CONFIGS):
    GEMMA4_TEXT_CONFIGS[_size.replace("gemma4_", "gemma4_instruct_")] = GEMMA4_TEXT_CONFIGS[_size]


def _gemma4_layers(c):
    """`(is_global, is_kv_shared)` of each Gemma 4 layer, as `Gemma4Backbone` lays them out."""
    count, pattern = c["num_layers"], c.get("sliding_window_pattern", 6)
    types = c.get("layer_types") or [
        "full_attention" if i % pattern == pattern - 1 else "sliding_attention" for i in range(count)
    ]
    first_shared = count - c.get("num_kv_shared_layers", 0)
    return [(kind == "full_attention", i >= first_shared) for i, kind in enumerate(types)]


def count_gemma4_parameters(c):
    """Weights of a Gemma 4 text backbone (no vision/audio tower) from its config.

    Example:
    >>> from kerasgemma.tiny import tiny_backbone_config
    >>> import keras_hub
    >>> config = tiny_backbone_config("gemma4", 600)
    >>> count_gemma4_parameters(config) == keras_hub.models.Gemma4Backbone(**config).count_params()
    True
    """
    hidden, heads = c["hidden_dim"], c["num_query_heads"]
    per_layer = c.get("hidden_size_per_layer_input", 0)
    total = c["vocabulary_size"] * hidden + hidden  # embedding, final norm
    if per_layer:
        vocabulary = c.get("vocab_size_per_layer_input") or c["vocabulary_size"]
        total += (vocabulary + hidden) * c["num_layers"] * per_layer + per_layer
    for is_global, shared in _gemma4_layers(c):
        head_dim = (c.get("global_head_dim") or c["head_dim"]) if is_global else c["head_dim"]
        k_eq_v = is_global and c.get("num_global_key_value_heads") is not None
        kv_heads = c["num_global_key_value_heads"] if k_eq_v else c["num_key_value_heads"]
        total += 2 * heads * hidden * head_dim + head_dim  # query, output, query norm
        if not shared:
            total += (1 if k_eq_v else 2) * kv_heads * hidden * head_dim + head_dim  # key (value), key norm
        width = c["intermediate_dim"] * (2 if shared and c.get("use_double_wide_mlp") else 1)
        total += 3 * hidden * width + 4 * hidden + 1  # MLP, 4 norms, layer scalar
        if per_layer:
            total += 2 * hidden * per_layer + hidden
        if c.get("enable_moe_block"):
            experts, width = c["num_experts"], c["expert_intermediate_dim"]
            total += 3 * experts * hidden * width + experts  # expert bank, per-expert scale
            total += hidden * experts + hidden + 3 * hidden  # router, its scale, 3 more norms
    return total


def count_parameters(backbone_config, architecture):
    """Weights of a Gemma text backbone from its config, without building it.

    Args:
        backbone_config: dict. `GemmaBackbone`/`Gemma3Backbone`/`Gemma4Backbone` config.
        architecture: str. "gemma", "gemma2", "gemma3", "gemma4" or "gemma4-moe".

    Example:
    >>> from kerasgemma.tiny import tiny_backbone_config
    >>> count_parameters(tiny_backbone_config("gemma", 546), "gemma")
    28896
    """
    c = backbone_config
    if architecture.startswith("gemma4"):
        return count_gemma4_parameters(c)
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
    if preset in GEMMA4_TEXT_CONFIGS:
        return "gemma4", dict(GEMMA4_TEXT_CONFIGS[preset])
    if preset in GEMMA_TEXT_CONFIGS:
        return "gemma", dict(GEMMA_TEXT_CONFIGS[preset])
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
