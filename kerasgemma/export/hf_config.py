"""The Hugging Face `config.json` of a Keras Gemma backbone.

keras-hub 0.32's exporter writes a Gemma 2 `GemmaBackbone` as a Gemma 1
config (transformers loads it and the logits are wrong, max |Δ| 1.0) and
hard-codes bos=1/eos=2 for Gemma 3 (real Gemma vocabularies use bos=2,
eos=1). Here the generation is detected from what the backbone does, every
setting is read from the layers that use it, and a backbone that no
transformers class can reproduce is refused instead of exported wrong.
"""

import keras_hub

ARCHITECTURES = {
    "gemma": ("GemmaForCausalLM", "gemma"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}


def detect_architecture(backbone):
    """Which Gemma generation a Keras backbone is: "gemma", "gemma2", "gemma3".

    keras-hub uses one `GemmaBackbone` class for Gemma 1 and 2; a Gemma 2
    backbone is the one with post-attention/post-FFW norms.

    Args:
        backbone: `keras_hub.models.GemmaBackbone` or `Gemma3Backbone`.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> detect_architecture(build_tiny_causal_lm("gemma2").backbone)
    'gemma2'
    """
    if isinstance(backbone, keras_hub.models.Gemma3Backbone):
        if backbone.vision_encoder is not None:
            raise ValueError(
                "Only text-only Gemma 3 backbones can be exported "
                "(this one has a vision encoder)."
            )
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
        "Expected a keras_hub GemmaBackbone or Gemma3Backbone, got "
        f"{type(backbone).__name__}."
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
    return [
        "sliding_attention" if b.use_sliding_window_attention else "full_attention"
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


def hf_config(backbone, tokenizer, dtype="bfloat16"):
    """The transformers `config.json` dict for a Keras Gemma backbone.

    Args:
        backbone: `keras_hub.models.GemmaBackbone` or `Gemma3Backbone`.
        tokenizer: the matching keras-hub Gemma tokenizer (special token ids).
        dtype: str. Dtype of the written weights ("bfloat16", "float32", ...).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma3")
    >>> config = hf_config(lm.backbone, lm.preprocessor.tokenizer)
    >>> config["model_type"], config["bos_token_id"], config["eos_token_id"]
    ('gemma3_text', 2, 1)
    """
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
            if architecture == "gemma3"
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
