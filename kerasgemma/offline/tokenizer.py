"""Rebuild Gemma's SentencePiece model from a GGUF vocabulary.

A GGUF file carries the tokenizer as metadata arrays (pieces, scores, token
types, special ids), not as the `tokenizer.model` proto that keras-hub's
`Gemma3Tokenizer` and transformers' `GemmaTokenizer` read. This module writes
that proto back. Two things llama.cpp changed on the way to GGUF have to be
undone, otherwise ids differ from transformers' GGUF tokenizer (measured:
plain Chinese matched, turn markers and whitespace runs did not):

1. The whitespace-run pieces (ids 138-167 in Gemma 3, two to 31 spaces) are
   stored with raw spaces. SentencePiece escapes spaces to "▁" before
   matching pieces, so a piece spelled with spaces never matches; spell them
   with "▁" again. They are also typed USER_DEFINED, which SentencePiece
   matches longest-first, while transformers builds them by BPE merges
   (best-ranked first). The two differ on runs longer than 31: 32 spaces
   then "y" is [16 spaces, 16 spaces, "y"] in transformers and [31 spaces,
   "▁y"] as USER_DEFINED. Written as NORMAL pieces ranked above every other
   merge, in id order, SentencePiece merges them as transformers does.
2. Markers such as `<start_of_turn>` are typed CONTROL, and SentencePiece
   never matches a CONTROL piece in text. transformers matches every
   CONTROL and USER_DEFINED piece as a whole in text, so all of them except
   the four whose ids the tokenizer adds itself (pad, eos, bos, unk) are
   written as USER_DEFINED. Those four are CONTROL (unk: UNKNOWN) because
   SentencePiece requires it; typing "<bos>" as literal text therefore gives
   its characters, not id 2 (the same as Google's own `tokenizer.model`).
"""

from sentencepiece import sentencepiece_model_pb2

# llama.cpp's token types (gguf.TokenType) have the same numbers as
# SentencePiece's piece types; only the policy for CONTROL differs (above).
_Type = sentencepiece_model_pb2.ModelProto.SentencePiece.Type
GGUF_TOKENIZER_FIELDS = {
    "tokens": "tokenizer.ggml.tokens",
    "scores": "tokenizer.ggml.scores",
    "token_types": "tokenizer.ggml.token_type",
    "bos_id": "tokenizer.ggml.bos_token_id",
    "eos_id": "tokenizer.ggml.eos_token_id",
    "unk_id": "tokenizer.ggml.unknown_token_id",
    "pad_id": "tokenizer.ggml.padding_token_id",
}
WHITESPACE_SYMBOL = "\u2581"


def _is_space_run(token):
    # Only pieces made of spaces alone are affected (fix 1 in the module
    # docstring); every other piece already uses "▁" for a space.
    return bool(token) and set(token) == {" "}


def _piece_type(index, token_type, unk_id, special_ids):
    # Gemma's GGUF types <unk> CONTROL too; SentencePiece (as built into
    # tensorflow-text, which keras-hub uses) then refuses the model with
    # "unk is not defined".
    if index == unk_id:
        return _Type.UNKNOWN
    if index in special_ids:
        return _Type.CONTROL
    if token_type == _Type.CONTROL:
        return _Type.USER_DEFINED
    return token_type


def sentencepiece_proto(
    tokens, scores, token_types, bos_id=2, eos_id=1, unk_id=3, pad_id=0
):
    """Serialize a Gemma-style SentencePiece BPE model from a vocabulary.

    Args:
        tokens: list of str. Pieces, in id order, as a GGUF stores them.
        scores: list of float. One score per piece (higher merges first).
        token_types: list of int. GGUF/SentencePiece type of each piece.
        bos_id: int. Id of the beginning-of-sequence piece.
        eos_id: int. Id of the end-of-sequence piece.
        unk_id: int. Id of the unknown piece.
        pad_id: int. Id of the padding piece.

    Returns:
        bytes. A `ModelProto` that `sentencepiece` and keras-hub load.

    Example:
    >>> import sentencepiece as spm
    >>> tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "  "]
    >>> tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    >>> tokens += ["a", "b", "ab", "▁"]
    >>> types = [3, 3, 3, 3, 3, 4] + [6] * 256 + [1] * 4
    >>> scores = [-1000.0] * 6 + [0.0] * 256 + [-0.0, -1.0, -2.0, -3.0]
    >>> proto = sentencepiece_proto(tokens, scores, types)
    >>> sp = spm.SentencePieceProcessor(model_proto=proto)
    >>> sp.encode("<start_of_turn>ab     a", out_type=str)
    ['<start_of_turn>', 'ab', '▁▁', '▁▁', '▁', 'a']
    """
    if not len(tokens) == len(scores) == len(token_types):
        raise ValueError(
            f"tokens, scores and token_types must have one entry per piece; "
            f"got {len(tokens)}, {len(scores)} and {len(token_types)}."
        )
    special_ids = {pad_id, eos_id, bos_id, unk_id}
    space_runs = [i for i, token in enumerate(tokens) if _is_space_run(token)]
    best_score = max(
        (float(s) for s, t in zip(scores, token_types) if t == _Type.NORMAL),
        default=0.0,
    )
    model = sentencepiece_model_pb2.ModelProto()
    for index, (token, score, token_type) in enumerate(
        zip(tokens, scores, token_types)
    ):
        piece = model.pieces.add()
        piece.piece = token
        piece.score = float(score)
        piece.type = _piece_type(index, int(token_type), unk_id, special_ids)
    for rank, index in enumerate(space_runs):
        piece = model.pieces[index]
        piece.piece = WHITESPACE_SYMBOL * len(tokens[index])
        piece.type = _Type.NORMAL
        piece.score = best_score + len(space_runs) - rank

    # Gemma's own settings: BPE over the raw text (identity normalizer, no
    # dummy "▁" prefix, whitespace kept), unknown characters as bytes.
    trainer = model.trainer_spec
    trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.split_by_whitespace = False
    trainer.bos_id, trainer.eos_id = bos_id, eos_id
    trainer.unk_id, trainer.pad_id = unk_id, pad_id
    trainer.bos_piece, trainer.eos_piece = tokens[bos_id], tokens[eos_id]
    trainer.unk_piece, trainer.pad_piece = tokens[unk_id], tokens[pad_id]
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return model.SerializeToString()


def read_gguf_vocabulary(reader):
    """Read the tokenizer fields of an open GGUF file as plain values.

    Args:
        reader: `gguf.GGUFReader`. An open GGUF file with a SentencePiece
            ("llama"-type) vocabulary.

    Returns:
        dict with the keys of `GGUF_TOKENIZER_FIELDS`, ready to pass to
        `sentencepiece_proto(**vocabulary)`.

    Example:
    >>> import gguf
    >>> from kerasgemma.offline import gguf_path
    >>> reader = gguf.GGUFReader(gguf_path())  # doctest: +SKIP
    >>> read_gguf_vocabulary(reader)["tokens"][105]  # doctest: +SKIP
    '<start_of_turn>'
    """
    model_type = reader.fields["tokenizer.ggml.model"].contents()
    if model_type != "llama":
        raise ValueError(
            f"The GGUF has a {model_type!r} tokenizer; only SentencePiece "
            "('llama') vocabularies such as Gemma's can be rebuilt."
        )
    missing = [
        key for key in GGUF_TOKENIZER_FIELDS.values() if key not in reader.fields
    ]
    if missing:
        raise ValueError(f"The GGUF lacks the tokenizer fields {missing}.")
    return {
        name: reader.fields[key].contents()
        for name, key in GGUF_TOKENIZER_FIELDS.items()
    }


def sentencepiece_proto_from_gguf(gguf_path):
    """Rebuild the SentencePiece `tokenizer.model` bytes of a Gemma GGUF.

    Reading the file takes about 10 s: `gguf` parses the 262k-entry
    vocabulary arrays one element at a time.

    Args:
        gguf_path: str. Path of a Gemma `.gguf` file.

    Returns:
        bytes. The serialized SentencePiece model.

    Example:
    >>> import keras_hub
    >>> from kerasgemma.offline import gguf_path
    >>> proto = sentencepiece_proto_from_gguf(gguf_path())  # doctest: +SKIP
    >>> tokenizer = keras_hub.models.Gemma3Tokenizer(proto=proto)  # doctest: +SKIP
    >>> [int(i) for i in tokenizer.tokenize("<start_of_turn>user")]  # doctest: +SKIP
    [105, 2364]
    """
    import gguf

    return sentencepiece_proto(**read_gguf_vocabulary(gguf.GGUFReader(gguf_path)))
