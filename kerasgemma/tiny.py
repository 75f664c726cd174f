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

import functools
import io

import keras
import keras_hub
import sentencepiece as spm

TURN_PIECES = ["<start_of_turn>", "<end_of_turn>"]
IMAGE_PIECES = ["<img>", "<start_of_image>", "<end_of_image>"]
# Gemma 4's markers. `Gemma4Tokenizer` requires the image ones and
# `<|video|>` (its defaults have_vision_tokens/has_video_tokens=True); the
# turn, thinking and tool pieces are what its chat template writes.
GEMMA4_PIECES = [
    "<|turn>",
    "<turn|>",
    "<|think|>",
    "<|channel>",
    "<channel|>",
    "<|tool>",
    "<tool|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|tool_response>",
    "<tool_response|>",
    '<|"|>',
    "<|image>",
    "<|image|>",
    "<image|>",
    "<|audio>",
    "<|audio|>",
    "<audio|>",
    "<|video|>",
]

_TINY_CORPUS_EXTRA = [
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "Gemma is a family of open models. Hello world!",
    "问题：中国的首都是哪里？答案：北京。",
    "<start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n你好！<end_of_turn>\n",
    "    indented line\ttab\n\nnew paragraph  two spaces",
]

_GEMMA4_CORPUS = [
    "<|turn>user\n你好<turn|>\n<|turn>model\n你好！<turn|>\n",
]

ARCHITECTURES = ("gemma", "gemma2", "gemma3", "gemma4", "gemma4-moe")
# Tiny multimodal models: name -> the text architecture they extend.
MULTIMODAL = {"gemma3-vision": "gemma3", "gemma4-vision-audio": "gemma4"}


def build_tiny_tokenizer_proto(texts=(), vocabulary_size=600, special_pieces=None):
    """Train a small Gemma-like SentencePiece model and return its bytes.

    Args:
        texts: iterable of str. Extra training text (e.g. the training data).
        vocabulary_size: int. Target size; raised to fit every character of
            `texts` (SentencePiece requires it), and it may stop earlier.
        special_pieces: list of str or None. User-defined pieces (always one
            token each); None for Gemma 1–3's turn and image markers.

    Example:
    >>> proto = build_tiny_tokenizer_proto(["你好，世界"], vocabulary_size=300)
    >>> len(proto) > 0
    True
    >>> build_tiny_tokenizer_proto(["你好，世界"], vocabulary_size=300) is proto  # cached
    True
    """
    if special_pieces is None:
        special_pieces = TURN_PIECES + IMAGE_PIECES
    return _train_tiny_tokenizer(tuple(texts), int(vocabulary_size), tuple(special_pieces))


@functools.lru_cache(maxsize=64)
def _train_tiny_tokenizer(texts, vocabulary_size, special_pieces):
    # Memoised: training is deterministic (one thread, fixed corpus order), so
    # the same texts give the same bytes; bytes are immutable, safe to share.
    special_pieces = list(special_pieces)
    texts = list(texts) + _TINY_CORPUS_EXTRA
    characters = len(set("".join(texts)))
    vocabulary_size = max(vocabulary_size, characters + 300 + len(special_pieces))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocabulary_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        byte_fallback=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=special_pieces,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


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

    Example:
    >>> type(build_tiny_tokenizer("gemma4")).__name__
    'Gemma4Tokenizer'
    """
    architecture = MULTIMODAL.get(architecture, architecture)
    if architecture not in _CLASSES:
        raise ValueError(
            f"Unknown architecture {architecture!r}; expected one of "
            f"{ARCHITECTURES + tuple(MULTIMODAL)}."
        )
    gemma4 = architecture.startswith("gemma4")
    proto = build_tiny_tokenizer_proto(
        list(texts) + (_GEMMA4_CORPUS if gemma4 else []),
        special_pieces=GEMMA4_PIECES if gemma4 else None,
    )
    return _CLASSES[architecture][1](proto=proto)


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
