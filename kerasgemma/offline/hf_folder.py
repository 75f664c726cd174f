"""Write a Gemma 3 GGUF as a minimal Hugging Face checkpoint folder.

keras-hub already converts Hugging Face Gemma 3 checkpoints to Keras
(`Gemma3CausalLM.from_preset(folder)`), and that converter matched
transformers' logits to 6e-5 on this model (docs/facts.md#offline-model). So instead of
mapping GGUF tensors onto Keras variables by hand, this module only undoes
what llama.cpp did when it wrote the GGUF, and lets keras-hub do the rest:

- tensor names: GGUF names -> HF names, through `gguf`'s own name table;
- quantization and norm weights: `gguf.quants.dequantize` back to float32,
  and 1 subtracted from the RMSNorm scales llama.cpp stores as 1 + w (Gemma
  multiplies by 1 + w at run time; llama.cpp's kernels by the stored value),
  as transformers' GGUF loader does: `gguf_layout.dequantized_hf_tensors`,
  the same function that reads back kerasgemma's own GGUF exports;
- config: the GGUF metadata, plus the Gemma 3 constants it does not store.

llama.cpp permutes Q/K rows only for its Llama-family converter, not for
Gemma, so no un-permutation is needed (the logits parity test checks this).
"""

import functools
import os

from safetensors.numpy import save_file

from kerasgemma.atomic import write_json_atomic
from kerasgemma.export.gguf_layout import (dequantized_hf_tensors,
                                           gguf_tensor_name)
from kerasgemma.files import HF_CONFIG, SAFETENSORS_SINGLE, TOKENIZER_MODEL
from kerasgemma.offline.tokenizer import (read_gguf_vocabulary,
                                          sentencepiece_proto)

# HF parameter names of one Gemma 3 decoder layer (without the `.weight`).
LAYER_PARAMETERS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)

# Gemma 3 settings the GGUF does not record. keras-hub's Gemma3Backbone
# hard-codes the same ones (local RoPE 10k, global 1M, every 6th layer
# global), and transformers' Gemma3TextConfig uses them as defaults.
LOCAL_ROPE_THETA = 10_000.0
GLOBAL_ROPE_THETA = 1_000_000.0
SLIDING_WINDOW_PATTERN = 6


def _metadata(reader, key):
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"The GGUF has no {key!r} metadata.")
    return field.contents()


def hf_config_from_gguf(reader):
    """Build a transformers `Gemma3TextConfig` dict from GGUF metadata.

    Args:
        reader: `gguf.GGUFReader`. An open Gemma 3 GGUF file.

    Returns:
        dict. The contents of an HF `config.json` (model_type
        "gemma3_text").

    Example:
    >>> import gguf
    >>> from kerasgemma.offline import gguf_path
    >>> reader = gguf.GGUFReader(gguf_path())  # doctest: +SKIP
    >>> hf_config_from_gguf(reader)["num_hidden_layers"]  # doctest: +SKIP
    18
    """
    architecture = _metadata(reader, "general.architecture")
    if architecture != "gemma3":
        raise ValueError(
            f"Expected a Gemma 3 GGUF, got architecture {architecture!r}."
        )

    def value(key):
        return _metadata(reader, f"gemma3.{key}")

    rope_theta = float(value("rope.freq_base"))
    if rope_theta != GLOBAL_ROPE_THETA:
        raise ValueError(
            f"keras-hub's Gemma3Backbone fixes the global RoPE base at "
            f"{GLOBAL_ROPE_THETA}, but this GGUF uses {rope_theta}."
        )
    head_dim = int(value("attention.key_length"))
    num_layers = int(value("block_count"))
    layer_types = [
        "full_attention"
        if (i + 1) % SLIDING_WINDOW_PATTERN == 0
        else "sliding_attention"
        for i in range(num_layers)
    ]
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": len(_metadata(reader, "tokenizer.ggml.tokens")),
        "hidden_size": int(value("embedding_length")),
        "intermediate_size": int(value("feed_forward_length")),
        "num_hidden_layers": num_layers,
        "num_attention_heads": int(value("attention.head_count")),
        "num_key_value_heads": int(value("attention.head_count_kv")),
        "head_dim": head_dim,
        # Gemma 3 scales queries by 1/sqrt(head_dim).
        "query_pre_attn_scalar": head_dim,
        # Stored as float32 (9.99999997e-07); rounded back to 1e-06.
        "rms_norm_eps": float(f"{value('attention.layer_norm_rms_epsilon'):.7g}"),
        "max_position_embeddings": int(value("context_length")),
        "sliding_window": int(value("attention.sliding_window")),
        "layer_types": layer_types,
        "rope_theta": rope_theta,
        "rope_local_base_freq": LOCAL_ROPE_THETA,
        "rope_scaling": None,
        "hidden_activation": "gelu_pytorch_tanh",
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "tie_word_embeddings": True,
        "pad_token_id": int(_metadata(reader, "tokenizer.ggml.padding_token_id")),
        "eos_token_id": int(_metadata(reader, "tokenizer.ggml.eos_token_id")),
        "bos_token_id": int(_metadata(reader, "tokenizer.ggml.bos_token_id")),
        "torch_dtype": "float32",
    }


def hf_parameter_names(num_layers):
    """HF names (without `.weight`) of a text-only Gemma 3 model.

    Args:
        num_layers: int. Number of decoder layers.

    Example:
    >>> hf_parameter_names(18)[:2]
    ['model.embed_tokens', 'model.norm']
    >>> len(hf_parameter_names(18))
    236
    """
    names = ["model.embed_tokens", "model.norm"]
    for i in range(num_layers):
        names += [f"model.layers.{i}.{name}" for name in LAYER_PARAMETERS]
    return names


def hf_weights_from_gguf(reader, num_layers, progress=True):
    """Dequantize a Gemma 3 GGUF into float32 arrays under HF names.

    Args:
        reader: `gguf.GGUFReader`. An open Gemma 3 GGUF file.
        num_layers: int. Number of decoder layers.
        progress: bool. Show a progress bar.

    Returns:
        dict of str to `np.ndarray`, HF layout ([out, in] kernels).

    Example:
    >>> import gguf
    >>> from kerasgemma.offline import gguf_path
    >>> reader = gguf.GGUFReader(gguf_path())  # doctest: +SKIP
    >>> weights = hf_weights_from_gguf(reader, 18)  # doctest: +SKIP
    >>> weights["model.layers.0.self_attn.q_proj.weight"].shape  # doctest: +SKIP
    (1024, 640)
    """
    import gguf
    from tqdm.auto import tqdm

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, num_layers)
    names = {
        gguf_tensor_name(name_map, f"{name}.weight"): f"{name}.weight"
        for name in hf_parameter_names(num_layers)
    }
    unmapped = {tensor.name for tensor in reader.tensors} - set(names)
    if unmapped:
        raise ValueError(f"GGUF tensors left unmapped: {sorted(unmapped)}.")
    return dequantized_hf_tensors(
        reader, names, progress=functools.partial(tqdm, desc="Dequantizing GGUF", disable=not progress)
    )


def write_hf_folder(gguf_file, folder, progress=True):
    """Write `config.json`, `model.safetensors` and `tokenizer.model`.

    The folder holds just what keras-hub's Hugging Face converter reads, in
    float32; `Gemma3CausalLM.from_preset(folder)` loads it.

    Args:
        gguf_file: str. Path of a Gemma 3 `.gguf` file.
        folder: str. Output folder (created if missing).
        progress: bool. Show a progress bar while dequantizing.

    Returns:
        str. `folder`.

    Example:
    >>> import tempfile
    >>> from kerasgemma.offline import gguf_path
    >>> folder = write_hf_folder(gguf_path(), tempfile.mkdtemp())  # doctest: +SKIP
    >>> sorted(os.listdir(folder))  # doctest: +SKIP
    ['config.json', 'model.safetensors', 'tokenizer.model']
    """
    import gguf

    reader = gguf.GGUFReader(gguf_file)
    config = hf_config_from_gguf(reader)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, TOKENIZER_MODEL), "wb") as file:
        file.write(sentencepiece_proto(**read_gguf_vocabulary(reader)))
    write_json_atomic(os.path.join(folder, HF_CONFIG), config)
    weights = hf_weights_from_gguf(reader, config["num_hidden_layers"], progress)
    save_file(weights, os.path.join(folder, SAFETENSORS_SINGLE), metadata={"format": "pt"})
    return folder
