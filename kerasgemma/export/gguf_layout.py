"""What llama.cpp's converter writes for a Gemma folder: architecture, tensor names and types.

The rules of `convert_hf_to_gguf.py` (ggml-org/llama.cpp, `GemmaModel`,
`Gemma2Model`, `Gemma3Model`), applied to the Hugging Face names and
layouts that `kerasgemma.export.weights` produces (docs/facts.md#gguf-export):

- names: `gguf.get_tensor_name_map(arch, layers)`, the converter's own table;
- `lm_head.weight` is not written (Gemma ties it to `token_embd`);
- every `*norm.weight` is stored as 1 + w: Gemma's RMSNorm multiplies by
  1 + w, llama.cpp's kernel by the stored value;
- no Q/K row permutation (only the Llama converter permutes for its RoPE);
- 1-D tensors stay F32; 2-D ones take the file's type, and a row length
  that Q8_0's 32-wide blocks do not divide falls back to F16.

`dequantized_hf_tensors` undoes it (float32, HF names, norms minus 1): the
read-back check and the offline Gemma 3 270M (`kerasgemma.offline`) use it.

llama.cpp then reads a Gemma 2 as sliding on even layers and a Gemma 3 as
sliding except every 6th layer, with local RoPE base 10 000 and queries
scaled by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B sizes): a
folder that computes anything else is refused here rather than written
into a GGUF that llama.cpp would run differently.
"""

import numpy as np

from kerasgemma.errors import UserError

# --gguf-type -> (tensor type of 2-D weights, general.file_type).
GGUF_TYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}
# Config model_type -> gguf.MODEL_ARCH member.
ARCHITECTURES = {"gemma": "GEMMA", "gemma2": "GEMMA2", "gemma3_text": "GEMMA3"}
# llama.cpp's SWA pattern per architecture (layer i slides if i % n < n - 1).
SWA_PATTERNS = {"gemma2": 2, "gemma3_text": 6}
# Layer counts llama.cpp reads as a 27B, which scales queries by hidden/heads.
SIZES_27B = {"gemma2": 46, "gemma3_text": 62}
LOCAL_ROPE_THETA = 10_000.0
# Tensors the architecture lists that a Gemma text GGUF does not hold
# (tied output, precomputed RoPE frequencies).
NOT_WRITTEN = ("OUTPUT", "ROPE_FREQS")


def gguf_type_names():
    """The `--gguf-type` choices.

    Example:
    >>> gguf_type_names()
    ('f32', 'f16', 'bf16', 'q8_0')
    """
    return tuple(GGUF_TYPES)


def gguf_architecture(config):
    """The `gguf.MODEL_ARCH` of an exported folder's `config.json`, or a one-line refusal.

    Args:
        config: dict. The folder's `config.json`.

    Example:
    >>> gguf_architecture({"model_type": "gemma", "num_hidden_layers": 2}).name
    'GEMMA'
    >>> gguf_architecture({"model_type": "gemma4_text"})
    Traceback (most recent call last):
    ...
    kerasgemma.errors.UserError: GGUF export covers Gemma 1-3: gguf 0.19 names the gemma4 architecture, but ...
    """
    import gguf

    model_type = config.get("model_type")
    if model_type in ("gemma4", "gemma4_text"):
        raise UserError(
            "GGUF export covers Gemma 1-3: gguf 0.19 names the gemma4 architecture, but kerasgemma does "
            "not yet write (or verify) what llama.cpp's Gemma 4 converter writes; export --format hf instead."
        )
    if "text_config" in config:
        raise UserError(
            f"GGUF export writes text-only models; this {config.get('architectures', ['?'])[0]} has "
            "vision/audio towers (llama.cpp keeps those in a separate mmproj GGUF, not written here)."
        )
    if model_type not in ARCHITECTURES:
        raise UserError(f"GGUF export supports Gemma 1-3 folders, not model_type {model_type!r}.")
    if not config.get("tie_word_embeddings", True):
        raise UserError("llama.cpp's Gemma converter ties the output to token_embd; this model has its own lm_head.")
    _require_llama_cpp_semantics(config)
    return gguf.MODEL_ARCH[ARCHITECTURES[model_type]]


def _require_llama_cpp_semantics(config):
    """Refuse settings that llama.cpp does not read from a GGUF but fixes per architecture."""
    model_type = config["model_type"]
    layers = config["num_hidden_layers"]
    if model_type in SWA_PATTERNS:
        pattern = SWA_PATTERNS[model_type]
        expected = [
            "sliding_attention" if i % pattern < pattern - 1 else "full_attention" for i in range(layers)
        ]
        if config.get("layer_types") != expected:
            raise UserError(
                f"llama.cpp runs {model_type} with a sliding layer pattern of {pattern}; "
                f"this model's layer_types differ, so its GGUF would compute something else."
            )
        scale = config.get("query_pre_attn_scalar")
        big = config["hidden_size"] // config["num_attention_heads"]
        if scale != config["head_dim"] and not (scale == big and layers == SIZES_27B[model_type]):
            raise UserError(
                f"llama.cpp scales {model_type} queries by 1/sqrt(head_dim) (hidden/heads only for "
                f"its 27B size); this model uses query_pre_attn_scalar={scale}."
            )
    if model_type == "gemma3_text":
        local = config["rope_parameters"]["sliding_attention"]
        if local.get("rope_theta") != LOCAL_ROPE_THETA or local.get("rope_type") != "default":
            raise UserError(
                "llama.cpp fixes Gemma 3's local RoPE at base 10000 without scaling; this model "
                f"uses {local}."
            )


def gguf_tensor_name(name_map, hf_name):
    """The GGUF name of an HF tensor (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`).

    Example:
    >>> import gguf
    >>> names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA2, 2)
    >>> gguf_tensor_name(names, "model.layers.1.post_feedforward_layernorm.weight")
    'blk.1.post_ffw_norm.weight'
    """
    name = name_map.get_name(hf_name, try_suffixes=(".weight",))
    if name is None:
        raise ValueError(f"llama.cpp's converter has no GGUF name for {hf_name!r}.")
    return name


def is_norm(hf_name):
    """True for the RMSNorm scales llama.cpp stores as 1 + w."""
    return hf_name.endswith("norm.weight")


def tensor_type(array, gguf_type):
    """The `GGMLQuantizationType` the converter gives `array` in a file of `gguf_type`.

    Example:
    >>> import numpy as np
    >>> tensor_type(np.zeros((4, 64)), "q8_0").name, tensor_type(np.zeros((4, 40)), "q8_0").name
    ('Q8_0', 'F16')
    >>> tensor_type(np.zeros(64), "bf16").name
    'F32'
    """
    import gguf

    if array.ndim <= 1:
        return gguf.GGMLQuantizationType.F32
    qtype = gguf.GGMLQuantizationType[GGUF_TYPES[gguf_type][0]]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if array.shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return qtype


def stored_tensor(hf_name, array, gguf_type):
    """`(data, tensor type)` of one HF tensor as the converter stores it.

    Example:
    >>> import numpy as np
    >>> data, qtype = stored_tensor("model.norm.weight", np.zeros(4, np.float32), "f16")
    >>> data.tolist(), qtype.name
    ([1.0, 1.0, 1.0, 1.0], 'F32')
    """
    import gguf

    array = np.asarray(array, dtype=np.float32)
    if is_norm(hf_name):
        array = array + np.float32(1.0)
    qtype = tensor_type(array, gguf_type)
    return gguf.quants.quantize(array, qtype), qtype


def expected_tensor_names(architecture, num_layers):
    """Every tensor name llama.cpp's converter writes for a tied Gemma text model.

    Example:
    >>> import gguf
    >>> names = expected_tensor_names(gguf.MODEL_ARCH.GEMMA, 1)
    >>> sorted(names)[:3]
    ['blk.0.attn_k.weight', 'blk.0.attn_norm.weight', 'blk.0.attn_output.weight']
    >>> len(names)
    11
    """
    import gguf

    names = set()
    for tensor in gguf.MODEL_TENSORS[architecture]:
        if tensor.name in NOT_WRITTEN:
            continue
        template = gguf.TENSOR_NAMES[tensor]
        blocks = range(num_layers) if "{bid}" in template else [None]
        names.update(f"{template.format(bid=bid)}.weight" for bid in blocks)
    return names


def dequantized_hf_tensors(reader, names, progress=None):
    """`{hf_name: float32 array}` of a Gemma GGUF: dequantized, the 1 + w norms undone.

    What `stored_tensor` wrote, read back as transformers' GGUF loader reads
    it; `dequantize` returns NumPy (row-major) order, the reverse of the
    GGUF's listed shape, which is HF's `[out_features, in_features]`.

    Args:
        reader: `gguf.GGUFReader`.
        names: dict of GGUF tensor name -> HF tensor name, the tensors to read.
        progress: callable or None. Wraps the list of names (e.g. tqdm).

    Example:
    >>> import os, tempfile, gguf
    >>> import numpy as np
    >>> names = {"output_norm.weight": "model.norm.weight", "token_embd.weight": "model.embed_tokens.weight"}
    >>> arrays = {"model.norm.weight": np.full(32, 0.5, np.float32), "model.embed_tokens.weight": np.ones((2, 32))}
    >>> path = os.path.join(tempfile.mkdtemp(), "m.gguf")
    >>> writer = gguf.GGUFWriter(path, "gemma")
    >>> for gguf_name, hf_name in names.items():
    ...     data, qtype = stored_tensor(hf_name, arrays[hf_name], "q8_0")
    ...     writer.add_tensor(gguf_name, data, raw_dtype=qtype)
    >>> writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    >>> weights = dequantized_hf_tensors(gguf.GGUFReader(path), names)
    >>> float(weights["model.norm.weight"][0]), weights["model.embed_tokens.weight"].shape
    (0.5, (2, 32))
    """
    import gguf

    tensors = {tensor.name: tensor for tensor in reader.tensors}
    items = list(names.items())
    weights = {}
    for gguf_name, hf_name in progress(items) if progress is not None else items:
        if gguf_name not in tensors:
            raise ValueError(f"The GGUF has no tensor {gguf_name!r} ({hf_name}).")
        tensor = tensors[gguf_name]
        array = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if is_norm(hf_name):
            array = array - np.float32(1.0)
        weights[hf_name] = np.ascontiguousarray(array)
    return weights
