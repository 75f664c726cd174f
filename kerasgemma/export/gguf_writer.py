"""Write an exported Gemma folder as one GGUF file, the way llama.cpp's converter does.

The input is a float32 merged folder written by `export_merged` (LoRA
already merged); the output is what `convert_hf_to_gguf.py --outtype TYPE`
writes for the same folder: the converter's metadata keys for the family,
its SentencePiece vocabulary (`tokenizer.ggml.*`, pieces typed as it types
them, chat template and special ids from `tokenizer_config.json` through
`gguf.SpecialVocab`), and its tensors (`kerasgemma.export.gguf_layout`).
One deliberate addition: `tokenizer.ggml.eot_token_id` is `<end_of_turn>`
for every family (the converter sets it, to the same id 107, for Gemma 1
only; llama.cpp finds it by its text for Gemma 2 and 3), so chat stops at
the end of a turn in every runtime. The converter's CodeGemma
fill-in-the-middle ids (67-70) are not written.
"""

import json
import os

from kerasgemma.atomic import replacing
from kerasgemma.export.gguf_layout import (GGUF_TYPES, gguf_architecture,
                                           gguf_tensor_name, stored_tensor)
from kerasgemma.export.safetensors_io import read_weight_map
from kerasgemma.export.tokenizer_files import END_OF_TURN
from kerasgemma.files import HF_CONFIG, TOKENIZER_CONFIG, TOKENIZER_MODEL

# gguf.TokenType values, which are SentencePiece's piece types.
CONTROL, USER_DEFINED, UNUSED = 3, 4, 5
ADDED_TOKEN_SCORE = -1000.0
# Special ids written as tokenizer.ggml.KIND_token_id.
SPECIAL_KINDS = ("bos", "eos", "unk", "pad")


def _read_json(folder, name):
    with open(os.path.join(folder, name), encoding="utf-8") as file:
        return json.load(file)


def sentencepiece_vocabulary(folder, vocab_size):
    """`(tokens, scores, types)` as the converter's `_create_vocab_sentencepiece` builds them.

    Pieces, scores and types come from `tokenizer.model` (SentencePiece's
    piece types are GGUF's token types); the tokens `tokenizer_config.json`
    declares as added and special become CONTROL with score -1000, `<unk>`
    included (as in Google's own Gemma GGUFs). USER_DEFINED pieces (HTML
    tags such as `<b>`) stay USER_DEFINED: the converter's SentencePiece
    loop types them NORMAL and gets USER_DEFINED from the added tokens of
    Google's `tokenizer_config.json`, which an exported folder lists only
    for the special ones; typed NORMAL, `<b>` was split into characters.

    Example:
    >>> import tempfile
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> from kerasgemma.export.tokenizer_files import write_tokenizer_files
    >>> tokenizer = build_tiny_causal_lm("gemma3").preprocessor.tokenizer
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_tokenizer_files(tokenizer, folder)
    >>> tokens, scores, types = sentencepiece_vocabulary(folder, tokenizer.vocabulary_size())
    >>> turn = tokenizer.token_to_id("<start_of_turn>")
    >>> tokens[turn], scores[turn], types[turn], types[3]
    (b'<start_of_turn>', -1000.0, 3, 3)
    """
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    with open(os.path.join(folder, TOKENIZER_MODEL), "rb") as file:
        model.ParseFromString(file.read())
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [UNUSED] * vocab_size
    for index, piece in enumerate(model.pieces[:vocab_size]):
        tokens[index] = piece.piece.encode("utf-8")
        scores[index] = piece.score
        types[index] = piece.type
    added = _read_json(folder, TOKENIZER_CONFIG).get("added_tokens_decoder", {})
    for index, token in added.items():
        index = int(index)
        if index >= vocab_size:
            continue
        content = token["content"]
        if token.get("special"):
            types[index] = CONTROL
        else:
            content = content.replace("\u2581", " ")
            types[index] = USER_DEFINED
        scores[index] = ADDED_TOKEN_SCORE
        tokens[index] = content.encode("utf-8")
    return tokens, scores, types


def _add_hyperparameters(writer, config, gguf_type):
    """The converter's `set_gguf_parameters` for GemmaModel / Gemma2Model / Gemma3Model."""
    import gguf

    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_file_type(gguf.LlamaFileType[GGUF_TYPES[gguf_type][1]])
    model_type = config["model_type"]
    if model_type == "gemma2":
        writer.add_attn_logit_softcapping(config["attn_logit_softcapping"])
        writer.add_final_logit_softcapping(config["final_logit_softcapping"])
        writer.add_sliding_window(config["sliding_window"])
    if model_type == "gemma3_text":
        full = config["rope_parameters"]["full_attention"]
        writer.add_rope_freq_base(full["rope_theta"])
        if full["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(full["factor"])
        if config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(config["final_logit_softcapping"])
        if config.get("sliding_window_pattern") != 1:
            writer.add_sliding_window(config["sliding_window"])


def _add_vocabulary(writer, folder, vocab_size):
    """The converter's `_set_vocab_sentencepiece` + `add_add_space_prefix(False)`, and the eot id."""
    import gguf

    tokens, scores, types = sentencepiece_vocabulary(folder, vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, n_vocab=len(tokens))
    # SpecialVocab maps token strings to ids through tokenizer.json, which a
    # folder holds only where transformers' conversion gives the same ids
    # (not the real Gemma 3 270M's); without it only config.json's ids are
    # found (no unk). The rest come from tokenizer_config.json's strings.
    named = _read_json(folder, TOKENIZER_CONFIG)
    for kind in SPECIAL_KINDS:
        content = named.get(f"{kind}_token")
        if kind not in special.special_token_ids and isinstance(content, str) and content.encode() in tokens:
            special.special_token_ids[kind] = tokens.index(content.encode())
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(False)
    end_of_turn = END_OF_TURN.encode("utf-8")
    if end_of_turn in tokens:
        writer.add_eot_token_id(tokens.index(end_of_turn))


def _hf_tensors(folder):
    """`(hf_name, float32 array)` of the folder's safetensors, one at a time."""
    from safetensors import safe_open

    weight_map = read_weight_map(folder)
    for file in sorted(set(weight_map.values())):
        with safe_open(os.path.join(folder, file), framework="np") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def write_gguf(folder, gguf_file, gguf_type="f16", name=None, progress=None):
    """Convert a float32 Gemma 1-3 folder (from `export_merged`) into one GGUF file.

    Args:
        folder: str. A merged folder written by `export_merged(dtype="float32")`.
        gguf_file: str. The `.gguf` path to write (atomically).
        gguf_type: str. "f32", "f16", "bf16" or "q8_0" (`gguf_type_names()`).
        name: str or None. `general.name` (default: the file's stem).
        progress: callable or None. Wraps the tensor iterator (e.g. tqdm).

    Returns:
        dict of GGUF tensor name -> HF tensor name, in the order written.

    Example:
    >>> import tempfile, gguf
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> from kerasgemma.export import export_merged
    >>> scratch = tempfile.mkdtemp()
    >>> folder = export_merged(build_tiny_causal_lm("gemma2"), scratch + "/hf", dtype="float32")
    >>> names = write_gguf(folder, scratch + "/m.gguf", "q8_0")
    >>> reader = gguf.GGUFReader(scratch + "/m.gguf")
    >>> reader.fields["general.architecture"].contents(), names["blk.0.post_ffw_norm.weight"]
    ('gemma2', 'model.layers.0.post_feedforward_layernorm.weight')
    """
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type must be one of {sorted(GGUF_TYPES)}, got {gguf_type!r}.")
    config = _read_json(folder, HF_CONFIG)
    architecture = gguf_architecture(config)
    name_map = gguf.get_tensor_name_map(architecture, config["num_hidden_layers"])
    written = {}
    with replacing(gguf_file) as scratch:
        # use_temp_file: tensors wait on disk, not in memory, until written.
        writer = gguf.GGUFWriter(os.fspath(scratch), gguf.MODEL_ARCH_NAMES[architecture], use_temp_file=True)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or os.path.splitext(os.path.basename(os.fspath(gguf_file)))[0])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(writer, config, gguf_type)
        _add_vocabulary(writer, folder, config["vocab_size"])
        tensors = _hf_tensors(folder)
        if progress is not None:
            tensors = progress(tensors)
        for hf_name, array in tensors:
            if hf_name == "lm_head.weight":
                continue  # tied to token_embd; the converter skips it too
            gguf_name = gguf_tensor_name(name_map, hf_name)
            data, qtype = stored_tensor(hf_name, array, gguf_type)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
            written[gguf_name] = hf_name
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return written
