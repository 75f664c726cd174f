"""Tokenize formatted conversations with the model's own tokenizer, with a loss mask.

The ids are exactly those of the *whole* conversation text (BOS once, as id,
in front), never of parts tokenized separately: SentencePiece merges across
part boundaries, so concatenated pieces would differ from what the model sees
at inference. Which tokens carry loss is decided from each piece's character
offsets against the model-turn spans of `format_chat`.

A keras-hub `GemmaTokenizer`/`Gemma3Tokenizer` wraps a SentencePiece model
(`tokenizer.proto`); we run that same model through `sentencepiece` directly
because it is much faster and gives piece offsets.
"""

import dataclasses

import numpy as np
import sentencepiece as spm

from kerasgemma.data.chat_format import TURN_FORMATS
from kerasgemma.data.chat_format import format_chat
from kerasgemma.data.report import TokenReport

LOSS_CHOICES = ("completion", "full")
OVERFLOW_CHOICES = ("truncate", "drop")


@dataclasses.dataclass
class TokenizedExample:
    """One example as token ids.

    Args:
        token_ids: int32 array `(n,)`, BOS first.
        loss_mask: int8 array `(n,)`. 1 where the token is a target that
            carries loss (never the BOS).
        source: str. Where the example came from ("FILE:LINE").
    """

    token_ids: np.ndarray
    loss_mask: np.ndarray
    source: str = ""


def sentencepiece_processor(tokenizer):
    """A `sentencepiece.SentencePieceProcessor` for a tokenizer or model bytes.

    Args:
        tokenizer: a keras-hub SentencePiece tokenizer (has `.proto`), the
            serialized model as bytes, or a `SentencePieceProcessor`.

    Example:
    >>> from kerasgemma.tiny import build_tiny_tokenizer_proto
    >>> processor = sentencepiece_processor(build_tiny_tokenizer_proto())
    >>> processor.bos_id(), processor.eos_id()
    (2, 1)
    """
    if isinstance(tokenizer, spm.SentencePieceProcessor):
        return tokenizer
    proto = tokenizer if isinstance(tokenizer, bytes) else getattr(tokenizer, "proto", None)
    if not isinstance(proto, bytes):
        raise TypeError(
            "Expected a keras-hub SentencePiece tokenizer (with a `proto`), the "
            f"SentencePiece model bytes, or a SentencePieceProcessor; got {type(tokenizer).__name__}."
        )
    return spm.SentencePieceProcessor(model_proto=proto)


def resolve_template(template, tokenizer):
    """The chat family "gemma" means for this tokenizer; other names unchanged.

    A tokenizer with Gemma 4's turn marker (`<|turn>`) as one piece gets
    "gemma4", any other "gemma3" (Gemma 1–3's format): the format follows
    the model, never a per-run setting.

    Example:
    >>> from kerasgemma.tiny import build_tiny_tokenizer_proto
    >>> resolve_template("gemma", build_tiny_tokenizer_proto())
    'gemma3'
    >>> resolve_template("plain", build_tiny_tokenizer_proto())
    'plain'
    """
    if template != "gemma":
        return template
    processor = sentencepiece_processor(tokenizer)
    for family, form in TURN_FORMATS.items():
        if family != "gemma3" and processor.piece_to_id(form.start) != processor.unk_id():
            return family
    return "gemma3"


def tokenize_examples(
    examples,
    tokenizer,
    max_tokens,
    template="gemma",
    loss="completion",
    overflow="truncate",
):
    """Tokenize examples and mark their loss tokens.

    Args:
        examples: list of `{"messages": [...], "source": str}` dicts.
        tokenizer: a keras-hub tokenizer, SentencePiece model bytes, or a
            `SentencePieceProcessor`.
        max_tokens: int. Most token ids per example, BOS included. An example
            of n ids gives n - 1 (input, next-token) positions, so
            `sequence_length + 1` fills a row of `sequence_length` exactly.
        template: str. "gemma" (the tokenizer's own Gemma chat format, see
            `resolve_template`), "gemma3", "gemma4" or "plain" (see `format_chat`).
        loss: str. "completion" puts loss on the model's turns only (answer
            and its end-of-turn marker); "full" on every token after BOS.
        overflow: str. For examples longer than `max_tokens`: "truncate"
            cuts the end (the answer side) or "drop" leaves them out. An
            example whose answer would be cut away entirely is always dropped.

    Returns:
        `(tokenized, report)`: a list of `TokenizedExample` and a `TokenReport`.

    Example:
    >>> from kerasgemma.tiny import build_tiny_tokenizer_proto
    >>> proto = build_tiny_tokenizer_proto()
    >>> examples = [{"messages": [{"role": "user", "content": "你好"},
    ...                           {"role": "assistant", "content": "你好！"}], "source": "x:1"}]
    >>> (example,), report = tokenize_examples(examples, proto, max_tokens=64)
    >>> processor = sentencepiece_processor(proto)
    >>> int(example.token_ids[0]) == processor.bos_id()
    True
    >>> processor.decode(example.token_ids[example.loss_mask == 1].tolist())
    '你好！<end_of_turn>'
    >>> report.truncated, report.dropped
    (0, 0)
    """
    if loss not in LOSS_CHOICES:
        raise ValueError(f"loss must be one of {LOSS_CHOICES}, got {loss!r}.")
    if overflow not in OVERFLOW_CHOICES:
        raise ValueError(f"overflow must be one of {OVERFLOW_CHOICES}, got {overflow!r}.")
    processor = sentencepiece_processor(tokenizer)
    template = resolve_template(template, processor)
    chats = [format_chat(example["messages"], template) for example in examples]
    encoded = processor.encode([chat.text for chat in chats], return_type="offset_mapping")
    tokenized, lengths, truncated, dropped = [], [], 0, 0
    for example, chat, pieces in zip(examples, chats, encoded):
        token_ids, loss_mask = _ids_and_mask(processor, chat, pieces, loss)
        lengths.append(len(token_ids))
        if len(token_ids) > max_tokens:
            if overflow == "drop" or not loss_mask[:max_tokens].any():
                dropped += 1
                continue
            token_ids, loss_mask = token_ids[:max_tokens], loss_mask[:max_tokens]
            truncated += 1
        tokenized.append(TokenizedExample(token_ids, loss_mask, example.get("source", "")))
    loss_tokens = sum(int(example.loss_mask.sum()) for example in tokenized)
    report = TokenReport.from_lengths(lengths, truncated, dropped, loss_tokens)
    return tokenized, report


def _ids_and_mask(processor, chat, pieces, loss):
    ids = [processor.bos_id()] + pieces["ids"]
    if loss == "full":
        mask = np.ones(len(pieces["ids"]), np.int8)
    else:
        mask = _in_spans(np.asarray(pieces["offsets"], np.int64).reshape(-1, 2), chat.loss_spans)
    mask = np.concatenate([[0], mask, [1] if chat.append_eos else []]).astype(np.int8)
    if chat.append_eos:
        ids.append(processor.eos_id())
    return np.asarray(ids, dtype=np.int32), mask


def _in_spans(offsets, spans):
    """1 for each piece `(begin, end)` that overlaps a model-turn span, else 0.

    Byte-fallback pieces of one character report empty ranges (begin == end)
    except the last, so a piece counts as covering at least its first
    character. A piece that straddles the prompt/answer boundary holds answer
    text the model must produce, so it carries loss.
    """
    begin = offsets[:, :1]
    end = np.maximum(offsets[:, 1:], begin + 1)
    spans = np.asarray(spans, np.int64).reshape(1, -1, 2)
    overlaps = (begin < spans[..., 1]) & (end > spans[..., 0])
    return overlaps.any(axis=1).astype(np.int8)
