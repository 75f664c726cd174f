"""Tiny randomly initialised Gemma models with a Gemma-like tokenizer.

Used by the fast tests and as a stand-in wherever a real checkpoint is not
needed. The tokenizer is trained with the settings that matter for parity
with Hugging Face (docs/facts.md#tokenizers: a default SentencePiece model tokenizes
Chinese differently in Keras and in transformers): identity normalizer, no
dummy prefix, byte fallback, split digits, whitespace-only pieces, and the
turn markers as user-defined pieces. Special ids follow Gemma: pad=0, eos=1,
bos=2, unk=3.

Gemma 4 (`gemma4`, `gemma4-moe`) is text-only here (no vision or audio
encoder) and its tokenizer carries Gemma 4's own markers (`<|turn>`,
`<turn|>`, thinking, tool and media pieces) instead of Gemma 1–3's.

Multimodal presets (every keras-hub Gemma 4 preset, Gemma 3 4B and up) are
stood in for by `gemma3-vision` (the `gemma3` text part with a tiny vision
tower) and `gemma4-vision-audio` (the `gemma4` text part with tiny vision and
audio towers), see `MULTIMODAL`.
"""

import keras
import keras_hub

from kerasgemma.tiny_tokenizer import ARCHITECTURES
from kerasgemma.tiny_tokenizer import GEMMA4_PIECES
from kerasgemma.tiny_tokenizer import IMAGE_PIECES
from kerasgemma.tiny_tokenizer import MULTIMODAL
from kerasgemma.tiny_tokenizer import TURN_PIECES
from kerasgemma.tiny_tokenizer import build_tiny_tokenizer_proto
from kerasgemma.tiny_tokenizer import tiny_tokenizer_proto

# The tokenizer's names live in kerasgemma.tiny_tokenizer (no Keras there) and are public here too.
__all__ = [
    "ARCHITECTURES", "GEMMA4_PIECES", "IMAGE_PIECES", "MULTIMODAL", "TURN_PIECES", "build_tiny_tokenizer_proto",
    "tiny_tokenizer_proto", "tiny_backbone_config", "build_tiny_tokenizer", "build_tiny_causal_lm",
]
def tiny_backbone_config(architecture, vocabulary_size, num_key_value_heads=1):
    """Keyword arguments for a tiny backbone of one Gemma generation.

    Args:
        architecture: str. One of `ARCHITECTURES`.
        vocabulary_size: int. Size of the tokenizer's vocabulary.
        num_key_value_heads: int. 1 like Gemma 2B, or more like Gemma 7B.

    Example:
    >>> tiny_backbone_config("gemma2", 300)["final_logit_soft_cap"]
    30.0
    >>> tiny_backbone_config("gemma4", 300)["num_kv_shared_layers"]
    2
    """
    common = dict(
        vocabulary_size=vocabulary_size,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=num_key_value_heads,
        hidden_dim=32,
        intermediate_dim=64,
        head_dim=8,
    )
    if architecture == "gemma":
        return common
    if architecture == "gemma2":
        return dict(
            common,
            query_head_dim_normalize=False,
            use_post_ffw_norm=True,
            use_post_attention_norm=True,
            attention_logit_soft_cap=50.0,
            final_logit_soft_cap=30.0,
            use_sliding_window_attention=True,
            sliding_window_size=8,
        )
    if architecture == "gemma3":
        return dict(
            common,
            image_size=896,
            query_head_dim_normalize=True,
            use_query_key_norm=True,
            use_post_ffw_norm=True,
            use_post_attention_norm=True,
            use_sliding_window_attention=True,
            sliding_window_size=8,
            local_rope_scaling_factor=1.0,
            global_rope_scaling_factor=1.0,
            vision_encoder=None,
        )
    if architecture.startswith("gemma4"):
        return _tiny_gemma4_config(architecture, common)
    raise ValueError(
        f"Unknown architecture {architecture!r}; expected one of {ARCHITECTURES}."
    )


def _tiny_gemma4_config(architecture, common):
    """Tiny Gemma 4: 4 layers, sliding/global alternating (last is global,
    which transformers forces), a window of 8 tokens so prompts exceed it,
    global heads twice as wide with RoPE on a quarter of them."""
    config = dict(
        common,
        num_layers=4,
        image_size=896,
        sliding_window_size=8,
        layer_types=["sliding_attention", "full_attention"] * 2,
        global_head_dim=16,
        global_rope_partial_rotary_factor=0.25,
        final_logit_soft_cap=30.0,
        vision_encoder=None,
        audio_encoder=None,
    )
    if architecture == "gemma4":
        # E2B/E4B-style: per-layer embeddings, the last two layers reuse the
        # K/V of layers 0 (sliding) and 1 (global) and have a 2x-wide MLP.
        return dict(
            config,
            hidden_size_per_layer_input=8,
            num_kv_shared_layers=2,
            use_double_wide_mlp=True,
        )
    if architecture == "gemma4-moe":
        # 26B-A4B-style: K=V global layers with their own KV head count and
        # an MoE block beside the dense MLP in every layer.
        return dict(
            config,
            num_key_value_heads=max(2, common["num_key_value_heads"]),
            num_global_key_value_heads=1,
            enable_moe_block=True,
            num_experts=4,
            expert_intermediate_dim=16,
            num_experts_per_token=2,
        )
    raise ValueError(
        f"Unknown architecture {architecture!r}; expected one of {ARCHITECTURES}."
    )


_GEMMA4_CLASSES = (
    keras_hub.models.Gemma4Backbone,
    keras_hub.models.Gemma4Tokenizer,
    keras_hub.models.Gemma4CausalLMPreprocessor,
    keras_hub.models.Gemma4CausalLM,
)

_CLASSES = {
    "gemma": (
        keras_hub.models.GemmaBackbone,
        keras_hub.models.GemmaTokenizer,
        keras_hub.models.GemmaCausalLMPreprocessor,
        keras_hub.models.GemmaCausalLM,
    ),
    "gemma2": (
        keras_hub.models.GemmaBackbone,
        keras_hub.models.GemmaTokenizer,
        keras_hub.models.GemmaCausalLMPreprocessor,
        keras_hub.models.GemmaCausalLM,
    ),
    "gemma3": (
        keras_hub.models.Gemma3Backbone,
        keras_hub.models.Gemma3Tokenizer,
        keras_hub.models.Gemma3CausalLMPreprocessor,
        keras_hub.models.Gemma3CausalLM,
    ),
    "gemma4": _GEMMA4_CLASSES,
    "gemma4-moe": _GEMMA4_CLASSES,
}


def build_tiny_tokenizer(architecture="gemma3", texts=()):
    """The keras-hub tokenizer of `build_tiny_causal_lm(architecture, texts)`, without a model.

    Its SentencePiece model is `kerasgemma.tiny_tokenizer.tiny_tokenizer_proto(architecture, texts)`.

    Example:
    >>> type(build_tiny_tokenizer("gemma4")).__name__
    'Gemma4Tokenizer'
    """
    proto = tiny_tokenizer_proto(architecture, texts)
    return _CLASSES[MULTIMODAL.get(architecture, architecture)][1](proto=proto)


def build_tiny_causal_lm(
    architecture="gemma3",
    texts=(),
    num_key_value_heads=1,
    sequence_length=128,
    seed=0,
    dtype="float32",
):
    """Build a tiny random Gemma causal LM with a Gemma-like tokenizer.

    Args:
        architecture: str. One of `ARCHITECTURES` or `MULTIMODAL`.
        texts: iterable of str. Extra text to train the tokenizer on.
        num_key_value_heads: int. Number of key/value heads.
        sequence_length: int. Preprocessor sequence length.
        seed: int. Seed for the random weights.
        dtype: str. Dtype policy of the backbone.

    Example:
    >>> lm = build_tiny_causal_lm("gemma", texts=["你好"])
    >>> lm.backbone.num_layers
    2
    """
    text_architecture = MULTIMODAL.get(architecture, architecture)
    backbone_cls, _, preprocessor_cls, lm_cls = _CLASSES[text_architecture]
    tokenizer = build_tiny_tokenizer(architecture, texts)
    keras.utils.set_random_seed(seed)
    config = tiny_backbone_config(
        text_architecture, tokenizer.vocabulary_size(), num_key_value_heads
    )
    if architecture in MULTIMODAL:
        config.update(_tiny_towers(text_architecture, config["hidden_dim"]))
    backbone = backbone_cls(**config, dtype=dtype)
    preprocessor = preprocessor_cls(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    return lm_cls(backbone=backbone, preprocessor=preprocessor)


def _tiny_towers(architecture, hidden_dim):
    """Backbone arguments adding tiny towers: a vision encoder for Gemma 3;
    vision and audio encoders for Gemma 4 (16x16 images; 8 mel bins, as
    many as the first subsampling conv's channels, which transformers'
    audio tower assumes, see `kerasgemma.export.towers`)."""
    if architecture == "gemma3":
        from keras_hub.src.models.gemma3.gemma3_vision_encoder import Gemma3VisionEncoder

        vision = Gemma3VisionEncoder(
            image_size=16, patch_size=8, num_heads=2, hidden_dim=8, num_layers=1,
            intermediate_dim=16, output_dim=hidden_dim, pool_size=2,
        )
        return dict(image_size=16, vision_encoder=vision)
    from keras_hub.src.models.gemma4.gemma4_audio_encoder import Gemma4AudioEncoder
    from keras_hub.src.models.gemma4.gemma4_vision_encoder import Gemma4VisionEncoder

    vision = Gemma4VisionEncoder(
        image_size=16, patch_size=4, num_heads=2, hidden_dim=8, num_layers=1, intermediate_dim=16,
        head_dim=4, output_dim=hidden_dim, pool_size=2, position_embedding_size=16,
    )
    audio = Gemma4AudioEncoder(
        input_feat_size=8, hidden_size=8, num_heads=2, num_layers=1, sscp_conv_channels=(8, 4),
        output_proj_dims=8, output_dim=hidden_dim,
    )
    return dict(vision_encoder=vision, audio_encoder=audio, num_audio_tokens_per_clip=4)
