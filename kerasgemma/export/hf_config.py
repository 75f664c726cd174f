"""The Hugging Face `config.json` of a Keras Gemma backbone.

keras-hub 0.32's exporter writes a Gemma 2 `GemmaBackbone` as a Gemma 1
config (transformers loads it and the logits are wrong, max |Δ| 1.0) and
hard-codes bos=1/eos=2 for Gemma 3 (real Gemma vocabularies use bos=2,
eos=1). Here the generation is detected from what the backbone does, every
setting is read from the layers that use it, and a backbone that no
transformers class can reproduce is refused instead of exported wrong.
"""

import keras_hub

from kerasgemma.export.towers import multimodal_config
from kerasgemma.export.towers import towers

ARCHITECTURES = {
    "gemma": ("GemmaForCausalLM", "gemma"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
    "gemma4": ("Gemma4ForCausalLM", "gemma4_text"),
}


def detect_architecture(backbone):
    """Which Gemma generation a Keras backbone is: "gemma" to "gemma4".

    keras-hub uses one `GemmaBackbone` class for Gemma 1 and 2; a Gemma 2
    backbone is the one with post-attention/post-FFW norms.

    Args:
        backbone: `keras_hub.models.GemmaBackbone` or `Gemma3Backbone`.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> detect_architecture(build_tiny_causal_lm("gemma2").backbone)
    'gemma2'
    """
    if isinstance(backbone, keras_hub.models.Gemma4Backbone):
        _require_gemma4_text(backbone)
        return "gemma4"
    if isinstance(backbone, keras_hub.models.Gemma3Backbone):
        if backbone.use_bidirectional_attention or getattr(
            backbone, "is_embedding_model", False
        ):
            raise ValueError(
                "Gemma 3 embedding models (bidirectional attention) are not "
                "causal LMs and cannot be exported as Gemma3ForCausalLM."
            )
        blocks = _decoder_blocks(backbone)
        if not all(b.attention.use_query_key_norm for b in blocks):
            raise ValueError(
                "Gemma3ForCausalLM always applies q/k norms; this backbone has "
                "use_query_key_norm=False, so no transformers class matches it."
            )
        _require_post_norms(backbone, "Gemma 3")
        return "gemma3"
    if isinstance(backbone, keras_hub.models.GemmaBackbone):
        if backbone.use_post_attention_norm or backbone.use_post_ffw_norm:
            _require_post_norms(backbone, "Gemma 2")
            return "gemma2"
        gemma2_only = {
            "attention_logit_soft_cap": backbone.attention_logit_soft_cap,
            "final_logit_soft_cap": backbone.final_logit_soft_cap,
            "use_sliding_window_attention": (
                backbone.use_sliding_window_attention or None
            ),
        }
        set_options = [k for k, v in gemma2_only.items() if v is not None]
        if set_options:
            raise ValueError(
                f"This GemmaBackbone sets {set_options} but has no post-norms: "
                "it is neither Gemma 1 nor Gemma 2 and cannot be exported."
            )
        return "gemma"
    raise TypeError(
        "Expected a keras_hub GemmaBackbone, Gemma3Backbone or Gemma4Backbone, got "
        f"{type(backbone).__name__}."
    )


def _require_gemma4_text(backbone):
    """Refuse a Gemma 4 backbone whose text part transformers cannot reproduce.

    A backbone with towers is exported whole as
    `Gemma4ForConditionalGeneration` (`kerasgemma.export.towers`).
    """
    if backbone.use_bidirectional_attention or backbone.is_embedding_model:
        raise ValueError(
            "Gemma 4 embedding models (bidirectional attention) are not "
            "causal LMs and cannot be exported as Gemma4ForCausalLM."
        )
    if backbone.attention_logit_soft_cap is not None:
        raise ValueError(
            "Gemma4ForCausalLM has no attention logit soft-cap; this backbone "
            f"sets {backbone.attention_logit_soft_cap}."
        )
    if not backbone.use_sliding_window_attention:
        raise ValueError(
            "Gemma4ForCausalLM always slides its sliding_attention layers; "
            "this backbone has use_sliding_window_attention=False."
        )
    if backbone.num_kv_shared_layers >= backbone.num_layers:
        raise ValueError(
            "A Gemma 4 assistant (every layer shares K/V) is not a causal LM "
            "on its own and cannot be exported."
        )
    if _layer_types(backbone)[-1] != "full_attention":
        # transformers rewrites the last layer to full attention (with a
        # warning): the folder would compute something else.
        raise ValueError("Gemma4ForCausalLM needs the last layer to be global.")
    for block in _decoder_blocks(backbone):
        attention = block.attention
        factor = attention.rope_partial_rotary_factor
        hf_rotary = 2 * int(factor * attention.head_dim // 2)
        if attention.rotary_dim != hf_rotary:
            raise ValueError(
                f"{block.name} rotates {attention.rotary_dim} of "
                f"{attention.head_dim} dims; transformers would rotate {hf_rotary}."
            )


def _require_post_norms(backbone, name):
    if not (backbone.use_post_attention_norm and backbone.use_post_ffw_norm):
        raise ValueError(
            f"{name} in transformers always has post-attention and post-FFW "
            "norms; this backbone lacks one, so no transformers class matches it."
        )


def _decoder_blocks(backbone):
    return [
        backbone.get_layer(f"decoder_block_{i}") for i in range(backbone.num_layers)
    ]


def _query_pre_attn_scalar(backbone):
    # keras-hub 0.32's decoder blocks pass query_head_dim_normalize=True to
    # their attention layer whatever the backbone says, so the scale actually
    # used is read from the attention layers, not from the backbone config.
    scalars = set()
    for block in _decoder_blocks(backbone):
        attention = block.attention
        if attention.query_head_dim_normalize:
            scalars.add(attention.head_dim)
        else:
            scalars.add(attention.hidden_dim // attention.num_query_heads)
    if len(scalars) != 1:
        raise ValueError(f"Layers use different query scales {sorted(scalars)}.")
    return scalars.pop()


def _layer_types(backbone):
    # Gemma 4 blocks record the type itself (a local layer of a backbone
    # without sliding windows is still "sliding_attention" to its rope).
    return [
        (
            ("full_attention" if b.is_global_attention else "sliding_attention")
            if hasattr(b, "is_global_attention")
            else ("sliding_attention" if b.use_sliding_window_attention else "full_attention")
        )
        for b in _decoder_blocks(backbone)
    ]


def _rope_parameters(backbone):
    """Per layer type rope settings, read from the Gemma 3 decoder blocks."""
    found = {}
    for block, layer_type in zip(_decoder_blocks(backbone), _layer_types(backbone)):
        rope = (float(block.rope_wavelength), float(block.rope_scaling_factor))
        if found.setdefault(layer_type, rope) != rope:
            raise ValueError(
                f"{layer_type} layers use different rope settings: "
                f"{found[layer_type]} and {rope}; transformers allows one each."
            )
    # A layer type no layer uses still needs an entry (transformers reads both).
    found.setdefault("sliding_attention", (10_000.0, 1.0))
    found.setdefault("full_attention", (1_000_000.0, 1.0))
    parameters = {}
    for layer_type, (theta, factor) in found.items():
        if factor == 1.0:
            parameters[layer_type] = {"rope_type": "default", "rope_theta": theta}
        else:
            # Keras divides positions by the factor: that is "linear" scaling.
            parameters[layer_type] = {
                "rope_type": "linear",
                "rope_theta": theta,
                "factor": factor,
            }
    return parameters


def _rope_entry(rope_type, theta, factor, **extra):
    entry = {"rope_type": rope_type, "rope_theta": float(theta), **extra}
    if factor != 1.0:
        entry["factor"] = float(factor)  # positions / factor, like Keras
    return entry


def _gemma4_settings(backbone):
    """The `gemma4_text` keys beyond those every Gemma config has.

    keras-hub 0.32's own Gemma 4 exporter omits `rope_type: proportional`
    (measured: max |Δlogits| 6e-2 with global_head_dim and partial rotary
    0.25) and `attention_k_eq_v` (transformers refuses the folder: v_proj
    missing, k_proj size mismatch); both are written here.
    """
    blocks = _decoder_blocks(backbone)
    layer_types = _layer_types(backbone)
    global_block = blocks[layer_types.index("full_attention")]
    local_blocks = [b for b, t in zip(blocks, layer_types) if t == "sliding_attention"]
    local_block = local_blocks[0] if local_blocks else None
    k_eq_v = any(b.attention.attention_k_eq_v for b in blocks)
    return dict(
        global_head_dim=global_block.attention.head_dim,
        num_global_key_value_heads=(
            backbone.num_global_key_value_heads or backbone.num_key_value_heads
        ),
        attention_k_eq_v=k_eq_v,
        layer_types=layer_types,
        sliding_window=backbone.sliding_window_size,
        final_logit_softcapping=backbone.final_logit_soft_cap,
        rope_parameters={
            # Proportional = partial rotary that keeps head_dim-wide cos/sin,
            # what Keras' rope_partial_rotary_factor computes.
            "full_attention": _rope_entry(
                "proportional",
                global_block.rope_wavelength,
                global_block.rope_scaling_factor,
                partial_rotary_factor=float(global_block.rope_partial_rotary_factor),
            ),
            "sliding_attention": (
                _rope_entry(
                    "default" if local_block.rope_scaling_factor == 1.0 else "linear",
                    local_block.rope_wavelength,
                    local_block.rope_scaling_factor,
                )
                if local_block
                else {"rope_type": "default", "rope_theta": 10_000.0}
            ),
        },
        hidden_size_per_layer_input=backbone.hidden_size_per_layer_input,
        vocab_size_per_layer_input=(
            backbone.vocab_size_per_layer_input or backbone.vocabulary_size
        ),
        num_kv_shared_layers=backbone.num_kv_shared_layers,
        use_double_wide_mlp=bool(backbone.use_double_wide_mlp),
        enable_moe_block=bool(backbone.enable_moe_block),
        num_experts=backbone.num_experts,
        moe_intermediate_size=backbone.expert_intermediate_dim,
        top_k_experts=backbone.num_experts_per_token if backbone.enable_moe_block else None,
        use_bidirectional_attention=None,
        max_position_embeddings=131_072,
    )


def _sliding_window_pattern(layer_types):
    # mlx-lm reads an int pattern (layer i is global when (i+1) % n == 0),
    # transformers reads layer_types; write both, and the int only if exact.
    # n = len + 1 covers "all sliding" (short models).
    for n in range(1, len(layer_types) + 2):
        expected = [
            "full_attention" if (i + 1) % n == 0 else "sliding_attention"
            for i in range(len(layer_types))
        ]
        if expected == layer_types:
            return n
    return None


def is_multimodal(backbone):
    """True if `backbone` has a vision or audio tower (exported as `*ForConditionalGeneration`).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> is_multimodal(build_tiny_causal_lm("gemma3-vision").backbone)
    True
    """
    return bool(towers(backbone))


def hf_config(backbone, tokenizer, dtype="bfloat16"):
    """The transformers `config.json` dict for a Keras Gemma backbone.

    A text-only backbone gets a flat `*ForCausalLM` config. A multimodal
    one (Gemma 3 with a vision encoder, Gemma 4 with vision and/or audio)
    gets the `*ForConditionalGeneration` config: this same text config as
    its `text_config`, the towers' configs beside it
    (`kerasgemma.export.towers.multimodal_config`).

    Args:
        backbone: a keras-hub Gemma 1–4 backbone.
        tokenizer: the matching keras-hub Gemma tokenizer (special token ids).
        dtype: str. Dtype of the written weights ("bfloat16", "float32", ...).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma3")
    >>> config = hf_config(lm.backbone, lm.preprocessor.tokenizer)
    >>> config["model_type"], config["bos_token_id"], config["eos_token_id"]
    ('gemma3_text', 2, 1)
    >>> lm = build_tiny_causal_lm("gemma4-vision-audio")
    >>> config = hf_config(lm.backbone, lm.preprocessor.tokenizer)
    >>> config["model_type"], config["text_config"]["model_type"], sorted(config)[:2]
    ('gemma4', 'gemma4_text', ['architectures', 'audio_config'])
    """
    config = _text_config(backbone, tokenizer, dtype)
    if not is_multimodal(backbone):
        return config
    architecture = detect_architecture(backbone)
    if architecture == "gemma4":
        # The Keras backbone's own setting: image tokens attend to each other
        # both ways in sliding layers (irrelevant to text-only prompts).
        config["use_bidirectional_attention"] = (
            "vision" if getattr(backbone, "use_vision_bidirectional_attention", False) else None
        )
    return multimodal_config(architecture, backbone, tokenizer, config)


def _text_config(backbone, tokenizer, dtype):
    architecture = detect_architecture(backbone)
    class_name, model_type = ARCHITECTURES[architecture]
    embedding = backbone.get_layer("token_embedding")
    config = {
        "architectures": [class_name],
        "model_type": model_type,
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        # Gemma 1/2 Keras blocks split intermediate_dim between gate and up.
        "intermediate_size": (
            backbone.intermediate_dim
            if architecture in ("gemma3", "gemma4")
            else backbone.intermediate_dim // 2
        ),
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "head_dim": backbone.head_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": backbone.layer_norm_epsilon,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": bool(embedding.tie_weights),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.start_token_id,
        "eos_token_id": tokenizer.end_token_id,
        "dtype": dtype,
        "use_cache": True,
    }
    if architecture == "gemma":
        config.update(max_position_embeddings=8192, rope_theta=10_000.0)
        return config
    if architecture == "gemma4":
        config.update(_gemma4_settings(backbone))
        return config
    layer_types = _layer_types(backbone)
    config.update(
        query_pre_attn_scalar=_query_pre_attn_scalar(backbone),
        attn_logit_softcapping=backbone.attention_logit_soft_cap,
        final_logit_softcapping=backbone.final_logit_soft_cap,
        sliding_window=backbone.sliding_window_size,
        layer_types=layer_types,
    )
    if architecture == "gemma2":
        config.update(max_position_embeddings=8192, rope_theta=10_000.0)
        return config
    rope = _rope_parameters(backbone)
    full = rope["full_attention"]
    config.update(
        max_position_embeddings=131_072,
        rope_parameters=rope,
        # The flat keys below are what mlx-lm and older transformers read.
        rope_theta=full["rope_theta"],
        rope_local_base_freq=rope["sliding_attention"]["rope_theta"],
        rope_scaling=(
            {"rope_type": "linear", "factor": full["factor"]}
            if full["rope_type"] == "linear"
            else None
        ),
        sliding_window_pattern=_sliding_window_pattern(layer_types),
        use_bidirectional_attention=False,
    )
    return config
