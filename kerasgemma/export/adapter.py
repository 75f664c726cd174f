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

import json
import os
from collections import Counter

import numpy as np

from kerasgemma.export.folder import atomic_folder
from kerasgemma.export.safetensors_io import cast
from kerasgemma.export.weights import PROJECTIONS, _numpy

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
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
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"decoder_block_{i}")
        for module, (get_layer, _) in PROJECTIONS.items():
            layer = get_layer(block)
            if getattr(layer, "lora_enabled", False):
                found.append((f"model.layers.{i}.{module}", module, layer))
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
    ['adapter_config.json', 'adapter_model.safetensors']
    """
    from safetensors import numpy as safetensors_numpy

    tensors, ranks, alphas, modules = {}, {}, {}, set()
    for path, module, layer in _lora_layers(causal_lm.backbone):
        lora_a, lora_b, multiplier = peft_lora_pair(
            module, _numpy(layer.lora_kernel_a), _numpy(layer.lora_kernel_b)
        )
        short = module.split(".")[-1]
        modules.add(short)
        rank, alpha = layer.lora_rank * multiplier, layer.lora_alpha * multiplier
        if ranks.setdefault(short, rank) != rank or alphas.setdefault(short, alpha) != alpha:
            raise ValueError(f"{short} layers use different LoRA ranks or alphas.")
        prefix = f"base_model.model.{path}"
        tensors[f"{prefix}.lora_A.weight"] = cast(lora_a, dtype)
        tensors[f"{prefix}.lora_B.weight"] = cast(lora_b, dtype)
    # The most common (rank, alpha) is the default; the rest go in patterns.
    rank, alpha = Counter(zip(ranks.values(), alphas.values())).most_common(1)[0][0]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": sorted(modules),
        "rank_pattern": {m: r for m, r in ranks.items() if r != rank},
        "alpha_pattern": {m: a for m, a in alphas.items() if a != alpha},
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
        with open(os.path.join(scratch, ADAPTER_CONFIG), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    return os.path.abspath(os.fspath(output_dir))
