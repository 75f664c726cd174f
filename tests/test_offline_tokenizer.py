"""SentencePiece proto rebuilt from a GGUF vocabulary: rules, and parity.

The slow test checks, on every case of tests/data/tokenizer_corpus.txt and
on the whole file as one text, that keras-hub's `Gemma3Tokenizer` on the
rebuilt proto, transformers' tokenizer built from the same GGUF (the
reference) and transformers' `GemmaTokenizer` on the rebuilt proto (what an
exported HF folder ships) give the same ids, and that all three decode back
to the original text. Corpus format: cases separated by lines "---8<---";
read with newline="" so "\\r\\n" cases survive.
"""

import os

import keras_hub
import pytest
import sentencepiece as spm
from helpers import uses_offline_gguf
from sentencepiece import sentencepiece_model_pb2

from kerasgemma.export.gguf_reuse import reusing_gguf_reader
from kerasgemma.offline import sentencepiece_proto_from_gguf
from kerasgemma.offline.tokenizer import sentencepiece_proto

CORPUS = os.path.join(os.path.dirname(__file__), "data", "tokenizer_corpus.txt")
SEPARATOR = "\n---8<---\n"
Type = sentencepiece_model_pb2.ModelProto.SentencePiece.Type

BYTES = [f"<0x{byte:02X}>" for byte in range(256)]
# A toy vocabulary laid out like Gemma's GGUF: specials (all CONTROL, <unk>
# included), a turn marker typed CONTROL, space runs with raw spaces typed
# USER_DEFINED, a newline piece, byte pieces, then ranked NORMAL pieces.
TOY_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "\n"]
TOY_TOKENS += [" " * n for n in range(2, 5)] + BYTES
TOY_TOKENS += ["▁", "a", "b", "ab", "▁a", "c"]
TOY_TYPES = [3, 3, 3, 3, 3, 4, 4, 4, 4] + [6] * 256 + [1] * 6
TOY_SCORES = [-1000.0] * 9 + [0.0] * 256 + [-float(i) for i in range(6)]


def read_corpus():
    with open(CORPUS, encoding="utf-8", newline="") as file:
        text = file.read()
    return text.removesuffix("\n").split(SEPARATOR), text


def toy_model():
    proto = sentencepiece_proto(TOY_TOKENS, TOY_SCORES, TOY_TYPES)
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    return proto, model


def test_special_ids_keep_sentencepiece_types():
    _, model = toy_model()
    types = [model.pieces[i].type for i in range(4)]
    assert types == [Type.CONTROL, Type.CONTROL, Type.CONTROL, Type.UNKNOWN]
    spec = model.trainer_spec
    assert (spec.pad_id, spec.eos_id, spec.bos_id, spec.unk_id) == (0, 1, 2, 3)


def test_control_markers_become_user_defined_and_match_in_text():
    proto, model = toy_model()
    assert model.pieces[4].type == Type.USER_DEFINED
    processor = spm.SentencePieceProcessor(model_proto=proto)
    assert processor.encode("<start_of_turn>ab\n") == [4, 268, 5]


def test_space_runs_are_respelled_ranked_normal_pieces():
    proto, model = toy_model()
    runs = [model.pieces[i] for i in (6, 7, 8)]
    assert [piece.piece for piece in runs] == ["▁▁", "▁▁▁", "▁▁▁▁"]
    assert all(piece.type == Type.NORMAL for piece in runs)
    # Ranked above every other merge, shorter runs first, like the BPE
    # merges transformers derives from the GGUF's token order.
    best_normal = max(p.score for p in model.pieces if p.piece == "ab")
    assert runs[0].score > runs[1].score > runs[2].score > best_normal
    processor = spm.SentencePieceProcessor(model_proto=proto)
    # Five spaces are merged best-rank first, as BPE does: "▁▁", "▁▁", then
    # "▁▁"+"▁" -> "▁▁▁". As USER_DEFINED pieces they were matched
    # longest-first instead: ["a", "▁▁▁▁", "▁a"].
    assert processor.encode("a     a", out_type=str) == ["a", "▁▁", "▁▁▁", "a"]


def test_gemma_normalizer_settings():
    _, model = toy_model()
    normalizer = model.normalizer_spec
    assert normalizer.name == "identity"
    assert not normalizer.add_dummy_prefix
    assert not normalizer.remove_extra_whitespaces
    assert model.trainer_spec.byte_fallback and model.trainer_spec.split_digits
    assert model.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE


def test_keras_hub_loads_toy_proto():
    # tensorflow-text refuses a model whose <unk> is not UNKNOWN (Gemma's
    # GGUF types it CONTROL): "unk is not defined".
    proto, _ = toy_model()
    tokenizer = keras_hub.models.Gemma3Tokenizer(
        proto=proto, has_vision_tokens=False
    )
    assert tokenizer.token_to_id("<start_of_turn>") == 4


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="one entry per piece"):
        sentencepiece_proto(TOY_TOKENS, TOY_SCORES[:-1], TOY_TYPES)


def test_corpus_covers_required_cases():
    cases, text = read_corpus()
    assert len(cases) >= 50
    required = {
        "chinese": "首都",
        "english": "quick brown fox",
        "digits": "0123456789",
        "space run > 31": " " * 32,
        "newline run > 31": "\n" * 32,
        "tab run": "\t\t\t",
        "emoji": "👨‍👩‍👧‍👦",
        "rare CJK (extension B)": "𠜎",
        "turn markers": "<start_of_turn>user\n",
        "end marker": "<end_of_turn>",
        "CRLF": "\r\n",
    }
    missing = [name for name, sample in required.items() if sample not in text]
    assert not missing, missing


@pytest.mark.slow
@uses_offline_gguf
def test_corpus_parity_keras_hub_transformers(offline_gguf_reader, tmp_path):
    from transformers import AutoTokenizer, GemmaTokenizer

    real_gguf = offline_gguf_reader.data.filename
    # The worker's parsed file for both readers (a parse takes about 25 s).
    with reusing_gguf_reader(offline_gguf_reader):
        proto = sentencepiece_proto_from_gguf(real_gguf)
        reference = AutoTokenizer.from_pretrained(
            os.path.dirname(real_gguf), gguf_file=os.path.basename(real_gguf)
        )
    (tmp_path / "tokenizer.model").write_bytes(proto)
    keras_tokenizer = keras_hub.models.Gemma3Tokenizer(proto=proto)
    shipped = GemmaTokenizer.from_pretrained(str(tmp_path))

    cases, text = read_corpus()
    failures, total_tokens = [], 0
    for case in cases + [text]:
        expected = reference.encode(case, add_special_tokens=False)
        total_tokens += len(expected)
        keras_ids = [int(i) for i in keras_tokenizer.tokenize(case)]
        shipped_ids = shipped.encode(case, add_special_tokens=False)
        decoded = {
            "reference": reference.decode(expected),
            "keras": keras_tokenizer.detokenize(keras_ids),
            "shipped": shipped.decode(shipped_ids),
        }
        if keras_ids != expected or shipped_ids != expected:
            failures.append((case, expected, keras_ids, shipped_ids))
        failures += [(case, name) for name, out in decoded.items() if out != case]
    print(f"tokenizer corpus: {len(cases)} cases, {total_tokens} tokens")
    assert not failures, failures[:5]
    # With special tokens, both add <bos> (id 2) and nothing else.
    assert reference.encode("你好")[0] == 2
    assert reference.encode("你好")[1:] == [int(i) for i in keras_tokenizer("你好")]
