"""The SentencePiece model of the tiny Gemma models (`kerasgemma.tiny`), without Keras.

The tokenizer is trained with the settings that matter for parity with
Hugging Face (docs/facts.md#tokenizers): identity normalizer, no dummy
prefix, byte fallback, split digits, whitespace-only pieces, and the turn
markers as user-defined pieces. Special ids follow Gemma: pad=0, eos=1,
bos=2, unk=3. Gemma 4's carries Gemma 4's own markers.

Apart from `kerasgemma.tiny` (which wraps these bytes in keras-hub's
tokenizer classes) so that the data stage (`kerasgemma data`) can tokenize
for a `tiny:` preset with `sentencepiece` alone: importing keras-hub
imports TensorFlow (seconds). kerasgemma tokenizes through
`sentencepiece.SentencePieceProcessor` on the model bytes in either case
(`kerasgemma.data.tokenize.sentencepiece_processor`), so the ids are the
same (tests/test_data_fast_start.py).
"""

import functools
import io

import sentencepiece as spm

# A preset name of this form (`tiny:gemma3`) is a tiny model (`kerasgemma.model.load_causal_lm`).
TINY_PREFIX = "tiny:"

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


def tiny_tokenizer_proto(architecture="gemma3", texts=()):
    """The SentencePiece model bytes of `build_tiny_causal_lm(architecture, texts)`'s tokenizer.

    Args:
        architecture: str. One of `ARCHITECTURES` or `MULTIMODAL`.
        texts: iterable of str. Extra training text (the training data).

    Example:
    >>> tiny_tokenizer_proto("gemma") is tiny_tokenizer_proto("gemma3")  # Gemma 1-3 share one
    True
    """
    architecture = MULTIMODAL.get(architecture, architecture)
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r}; expected one of "
            f"{ARCHITECTURES + tuple(MULTIMODAL)}."
        )
    gemma4 = architecture.startswith("gemma4")
    return build_tiny_tokenizer_proto(
        list(texts) + (_GEMMA4_CORPUS if gemma4 else []),
        special_pieces=GEMMA4_PIECES if gemma4 else None,
    )

