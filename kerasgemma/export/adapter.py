"""Export the LoRA weights of a Keras Gemma model as a PEFT adapter folder.

Keras LoRA on an EinsumDense kernel of shape `s[:-1] + (out,)` stores
A `s[:-1] + (r,)` and B `(r, out)`. For the attention output and the MLP
kernels that is an ordinary rank-r LoRA. For q/k/v (kernel `(heads, hidden,
head_dim)`) A is `(heads, hidden, r)` and B `(r, head_dim)`: each head has
its own A and all heads share B, so the update as an HF matrix has rank up
to heads·r. The exact PEFT equivalent therefore has rank heads·r, with A the
heads' A stacked and B block-diagonal, and alpha scaled by heads so that
PEFT's alpha/r equals Keras' alpha/rank. Still megabytes, and exact.
"""

import os
import re
from collections import Counter

import numpy as np

from kerasgemma.atomic import write_json_atomic
from kerasgemma.export.folder import atomic_folder
from kerasgemma.export.safetensors_io import cast
from kerasgemma.export.weights import MULTIMODAL_TEXT_PREFIX
from kerasgemma.export.weights import PROJECTIONS, _numpy
from kerasgemma.export.weights import text_prefix
from kerasgemma.files import ADAPTER_CONFIG
from kerasgemma.files import ADAPTER_WEIGHTS

_PER_HEAD = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}


def peft_lora_pair(module, a, b):
    """PEFT `(lora_A.weight, lora_B.weight, rank_multiplier)` of Keras A, B.

    Args:
        module: str. HF module name in a layer, e.g. "self_attn.q_proj".
        a: numpy array. Keras `lora_kernel_a`.
        b: numpy array. Keras `lora_kernel_b`.

    Example:
    >>> a, b = np.ones((4, 32, 2)), np.ones((2, 8))
    >>> lora_a, lora_b, heads = peft_lora_pair("self_attn.q_proj", a, b)
    >>> lora_a.shape, lora_b.shape, heads
    ((8, 32), (32, 8), 4)
    """
    if module in _PER_HEAD:
        heads, hidden, rank = a.shape
        lora_a = a.transpose(0, 2, 1).reshape(heads * rank, hidden)
        lora_b = np.kron(np.eye(heads, dtype=b.dtype), b.T)
        return lora_a, lora_b, heads
    rank = a.shape[-1]
    return a.reshape(-1, rank).T, b.T, 1


def _lora_layers(backbone):
    """`(hf_module_path, module, layer)` for every LoRA-enabled projection."""
    found, seen = [], set()
    prefix = text_prefix(backbone)
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"decoder_block_{i}")
        for module, (get_layer, _) in PROJECTIONS.items():
            layer = get_layer(block)
            if getattr(layer, "lora_enabled", False):
                found.append((f"{prefix}layers.{i}.{module}", module, layer))
                seen.add(id(layer))
    others = [
        layer.path
        for layer in backbone._flatten_layers()
        if getattr(layer, "lora_enabled", False) and id(layer) not in seen
    ]
    if others:
        raise ValueError(
            f"LoRA on {others} has no PEFT counterpart here; export a merged "
            "model instead."
        )
    if not found:
        raise ValueError("The model has no LoRA layers; call enable_lora first.")
    return found


def _rank_patterns(settings):
    """PEFT `(r, lora_alpha, rank_pattern, alpha_pattern)` of per-module ranks.

    The most common (rank, alpha) is the default. A module name whose
    layers all agree gets one pattern entry ("k_proj"); otherwise each layer
    that differs gets its own ("model.layers.1.self_attn.k_proj"): Gemma 4's
    K=V global layers have fewer K heads than its local ones, so their
    per-head rank (heads·r) differs within one module name.

    Args:
        settings: dict `{module_path: (rank, alpha)}`.

    Example:
    >>> _rank_patterns({"model.layers.0.self_attn.k_proj": (4, 4),
    ...                 "model.layers.1.self_attn.k_proj": (2, 2),
    ...                 "model.layers.0.self_attn.q_proj": (4, 4)})
    (4, 4, {'model.layers.1.self_attn.k_proj': 2}, {'model.layers.1.self_attn.k_proj': 2})
    """
    rank, alpha = Counter(settings.values()).most_common(1)[0][0]
    by_module = {}
    for path, value in settings.items():
        by_module.setdefault(path.split(".")[-1], {})[path] = value
    rank_pattern, alpha_pattern = {}, {}
    for module, paths in sorted(by_module.items()):
        values = set(paths.values())
        entries = {module: values.pop()} if len(values) == 1 else paths
        for key, (r, a) in sorted(entries.items()):
            if r != rank:
                rank_pattern[key] = r
            if a != alpha:
                alpha_pattern[key] = a
    return rank, alpha, rank_pattern, alpha_pattern


def target_modules(modules, prefix):
    r"""PEFT `target_modules`: the module names, or for a multimodal base a regex on the language model only.

    In a `*ForConditionalGeneration` model the towers have their own
    `q_proj`, `k_proj`, ... (Gemma 3's SigLIP, Gemma 4's clipped linears):
    a plain name list would put LoRA on them too (PEFT matches name
    suffixes), so the regex (a str, which PEFT full-matches) names only
    `model.language_model.layers.N.<module>`.

    Example:
    >>> target_modules({"q_proj", "down_proj"}, "model.")
    ['down_proj', 'q_proj']
    >>> print(target_modules({"q_proj", "down_proj"}, "model.language_model."))
    model\.language_model\.layers\.\d+\.(?:self_attn|mlp)?\.?(?:down_proj|q_proj)
    """
    if prefix != MULTIMODAL_TEXT_PREFIX:
        return sorted(modules)
    return (
        re.escape(prefix) + r"layers\.\d+\.(?:self_attn|mlp)?\.?(?:" + "|".join(sorted(modules)) + ")"
    )


def export_adapter(
    causal_lm,
    output_dir,
    base_model_name_or_path,
    dtype="float32",
    overwrite=False,
):
    """Write the model's LoRA weights as a PEFT LoRA adapter folder.

    Apply it to the base model exported with `export_merged(...,
    merge_lora=False)` or to the official checkpoint it was trained from.

    Args:
        causal_lm: a Gemma causal LM with LoRA enabled.
        output_dir: str or path. Folder to create; a previous export there
            is replaced, any other non-empty folder refused.
        base_model_name_or_path: str. The base model PEFT records, e.g.
            "google/gemma-2b" or a local base folder.
        dtype: str. Adapter weight dtype; float32 like the Keras LoRA weights.
        overwrite: bool. Also replace a non-empty folder that is not an export.

    Returns:
        str, the absolute path of the folder.

    Example:
    >>> import tempfile
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma")
    >>> lm.backbone.enable_lora(2)
    >>> folder = export_adapter(lm, tempfile.mkdtemp() + "/a", "google/gemma-2b")
    >>> sorted(os.listdir(folder))
    ['.kerasgemma-export', 'adapter_config.json', 'adapter_model.safetensors']
    """
    from safetensors import numpy as safetensors_numpy

    tensors, settings, modules = {}, {}, set()
    for path, module, layer in _lora_layers(causal_lm.backbone):
        lora_a, lora_b, multiplier = peft_lora_pair(
            module, _numpy(layer.lora_kernel_a), _numpy(layer.lora_kernel_b)
        )
        modules.add(module.split(".")[-1])
        settings[path] = (layer.lora_rank * multiplier, layer.lora_alpha * multiplier)
        prefix = f"base_model.model.{path}"
        tensors[f"{prefix}.lora_A.weight"] = cast(lora_a, dtype)
        tensors[f"{prefix}.lora_B.weight"] = cast(lora_b, dtype)
    rank, alpha, rank_pattern, alpha_pattern = _rank_patterns(settings)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": target_modules(modules, text_prefix(causal_lm.backbone)),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    with atomic_folder(output_dir, overwrite=overwrite) as scratch:
        safetensors_numpy.save_file(
            tensors, os.path.join(scratch, ADAPTER_WEIGHTS), metadata={"format": "pt"}
        )
        write_json_atomic(os.path.join(scratch, ADAPTER_CONFIG), config)
    return os.path.abspath(os.fspath(output_dir))
