"""Map Keras Gemma weights to Hugging Face tensor names and layouts.

The inverse of keras-hub's `convert_gemma.py` / `convert_gemma3.py`, with
three things keras-hub 0.32's own exporter gets wrong done right (docs/facts.md
#keras-hub-exporter): kernels are read through `layer.kernel` so LoRA is merged (the
exporter reads the frozen base and drops LoRA), every key/value head is kept
(it keeps only the first), and Gemma 2 norms get their Gemma 2 names.

A multimodal backbone's text tensors get the ConditionalGeneration prefix
(`model.language_model.`, `lm_head.weight` unchanged) and its towers'
tensors follow, unchanged from Keras (`kerasgemma.export.towers`).

Tensors are produced one at a time by generators, so a writer can stream
them to disk without a second copy of the model in host memory.
"""

import numpy as np

from keras import ops

from kerasgemma.export.hf_config import detect_architecture
from kerasgemma.export.hf_config import is_multimodal
from kerasgemma.export.towers import tower_tensor_plan

TEXT_PREFIX = "model."
MULTIMODAL_TEXT_PREFIX = "model.language_model."


def _heads_in(kernel):
    # q/k/v: Keras (heads, hidden, head_dim) -> HF (heads*head_dim, hidden).
    return kernel.transpose(0, 2, 1).reshape(-1, kernel.shape[1])


def _heads_out(kernel):
    # o: Keras (heads, head_dim, hidden) -> HF (hidden, heads*head_dim).
    return kernel.reshape(-1, kernel.shape[-1]).T


def _dense(kernel):
    # gate/up/down: Keras (in, out) -> HF (out, in).
    return kernel.T


# HF module name in a decoder layer -> (Keras layer getter, kernel mapping).
# A getter returns None where the block has no such layer: Gemma 4's
# KV-shared layers own no k/v projection, its K=V global layers no v
# projection, and only per-layer-embedding models have the two PLE ones.
PROJECTIONS = {
    "self_attn.q_proj": (lambda block: block.attention.query_dense, _heads_in),
    "self_attn.k_proj": (lambda block: block.attention.key_dense, _heads_in),
    "self_attn.v_proj": (lambda block: block.attention.value_dense, _heads_in),
    "self_attn.o_proj": (lambda block: block.attention.output_dense, _heads_out),
    "mlp.gate_proj": (lambda block: block.gating_ffw, _dense),
    "mlp.up_proj": (lambda block: block.gating_ffw_2, _dense),
    "mlp.down_proj": (lambda block: block.ffw_linear, _dense),
    "per_layer_input_gate": (
        lambda block: getattr(block, "per_layer_input_gate", None),
        _dense,
    ),
    "per_layer_projection": (
        lambda block: getattr(block, "per_layer_up_proj", None),
        _dense,
    ),
}


def _experts_gate_up(bank):
    # Keras gate/up (experts, hidden, inter) each -> HF one
    # (experts, 2*inter, hidden), gate first.
    return lambda: np.concatenate(
        [_numpy(bank.gate_proj).transpose(0, 2, 1), _numpy(bank.up_proj).transpose(0, 2, 1)],
        axis=1,
    )


def _gemma4_layer_extras(block):
    """(hf_name in a layer, shape, read) of a Gemma 4 block's other weights."""
    extras = [
        # A non-trainable buffer: () in Keras, (1,) in transformers.
        ("layer_scalar", (1,), lambda: _numpy(block.layer_scalar).reshape(1)),
    ]
    if block.enable_moe_block:
        router, bank = block.moe_router, block.moe_expert_bank
        experts, hidden, inter = bank.gate_proj.shape
        extras += [
            ("router.scale", tuple(router.per_dim_scale.shape), lambda: _numpy(router.per_dim_scale)),
            (
                "router.proj.weight",
                tuple(router.proj.kernel.shape[::-1]),
                lambda: _numpy(router.proj.kernel).T,
            ),
            (
                "router.per_expert_scale",
                tuple(bank.per_expert_scale.shape),
                lambda: _numpy(bank.per_expert_scale),
            ),
            ("experts.gate_up_proj", (experts, 2 * inter, hidden), _experts_gate_up(bank)),
            (
                "experts.down_proj",
                (experts, hidden, inter),
                lambda: _numpy(bank.down_proj).transpose(0, 2, 1),
            ),
        ]
    return extras


def _norms(architecture, block):
    """HF norm name in a decoder layer -> Keras RMSNormalization layer."""
    norms = {"input_layernorm": block.pre_attention_norm}
    if architecture == "gemma":
        # Gemma 1 calls its pre-FFW norm "post_attention_layernorm".
        norms["post_attention_layernorm"] = block.pre_ffw_norm
        return norms
    norms.update(
        post_attention_layernorm=block.post_attention_norm,
        pre_feedforward_layernorm=block.pre_ffw_norm,
        post_feedforward_layernorm=block.post_ffw_norm,
    )
    if architecture in ("gemma3", "gemma4"):
        norms["self_attn.q_norm"] = block.attention.query_norm
        norms["self_attn.k_norm"] = block.attention.key_norm
    if architecture == "gemma4":
        # Gemma 4 norms are `x * scale` in both libraries (no 1 + scale);
        # the v norm has no weight. KV-shared layers have no k norm.
        norms.update(
            {
                "post_feedforward_layernorm_1": getattr(block, "post_ffw_norm_dense", None),
                "pre_feedforward_layernorm_2": getattr(block, "pre_ffw_norm_moe", None),
                "post_feedforward_layernorm_2": getattr(block, "post_ffw_norm_moe_path", None),
                "post_per_layer_input_norm": getattr(block, "post_per_layer_input_norm", None),
            }
        )
    return {name: norm for name, norm in norms.items() if norm is not None}


def _numpy(tensor):
    return np.asarray(ops.convert_to_numpy(tensor))


def _kernel(layer, merge_lora):
    # `layer.kernel` is base + (alpha/rank)·A@B when LoRA is on; `_kernel`
    # is the frozen base that a PEFT adapter is applied to.
    if getattr(layer, "lora_enabled", False) and not merge_lora:
        return layer._kernel
    return layer.kernel


def hf_tensor_shapes(backbone):
    """`{hf_name: shape}` of every tensor `hf_tensors` yields, without data.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma", num_key_value_heads=2)
    >>> hf_tensor_shapes(lm.backbone)["model.layers.0.self_attn.k_proj.weight"]
    (16, 32)
    >>> shapes = hf_tensor_shapes(build_tiny_causal_lm("gemma4").backbone)
    >>> "model.layers.2.self_attn.k_proj.weight" in shapes  # shares layer 0's
    False
    >>> shapes = hf_tensor_shapes(build_tiny_causal_lm("gemma3-vision").backbone)
    >>> shapes["model.language_model.embed_tokens.weight"][1], "model.embed_tokens.weight" in shapes
    (32, False)
    """
    return {name: shape for name, shape, _ in _tensor_plan(backbone, True)}


def hf_tensors(backbone, merge_lora=True):
    """Yield `(hf_name, numpy_array)` for every weight, one at a time.

    Args:
        backbone: a Gemma 1–4 keras-hub backbone, LoRA enabled or not.
        merge_lora: bool. Merge LoRA into the kernels (True) or export the
            frozen base kernels a PEFT adapter applies to (False).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma3")
    >>> name, array = next(hf_tensors(lm.backbone))
    >>> name, array.shape[1]
    ('model.embed_tokens.weight', 32)
    """
    for name, _, read in _tensor_plan(backbone, merge_lora):
        yield name, read()


def text_prefix(backbone):
    """Where the text model's tensors live: "model." or, with towers, "model.language_model.".

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> text_prefix(build_tiny_causal_lm("gemma4-vision-audio").backbone)
    'model.language_model.'
    """
    return MULTIMODAL_TEXT_PREFIX if is_multimodal(backbone) else TEXT_PREFIX


def _tensor_plan(backbone, merge_lora):
    """(hf_name, shape, read) triples; `read()` materialises one tensor."""
    plan = _text_tensor_plan(backbone, merge_lora)
    prefix = text_prefix(backbone)
    if prefix == TEXT_PREFIX:
        return plan
    plan = [
        (prefix + name[len(TEXT_PREFIX):] if name.startswith(TEXT_PREFIX) else name, shape, read)
        for name, shape, read in plan
    ]
    return plan + tower_tensor_plan(backbone)


def _text_tensor_plan(backbone, merge_lora):
    """The text model's (hf_name, shape, read) triples, named as in `*ForCausalLM`."""
    architecture = detect_architecture(backbone)
    embedding = backbone.get_layer("token_embedding")
    vocab, hidden = embedding._embeddings.shape
    plan = [
        (
            "model.embed_tokens.weight",
            (vocab, hidden),
            lambda: _numpy(
                embedding.embeddings if merge_lora else embedding._embeddings
            ),
        )
    ]
    if architecture == "gemma4" and backbone.hidden_size_per_layer_input > 0:
        plan += _per_layer_embedding_plan(backbone, merge_lora)
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"decoder_block_{i}")
        prefix = f"model.layers.{i}."
        for name, norm in _norms(architecture, block).items():
            plan.append(
                (
                    f"{prefix}{name}.weight",
                    tuple(norm.scale.shape),
                    lambda norm=norm: _numpy(norm.scale),
                )
            )
        for name, (get_layer, to_hf) in PROJECTIONS.items():
            layer = get_layer(block)
            if layer is None:
                continue
            shape = to_hf(np.empty(layer._kernel.shape, dtype=np.bool_)).shape
            plan.append(
                (
                    f"{prefix}{name}.weight",
                    shape,
                    lambda layer=layer, to_hf=to_hf: to_hf(
                        _numpy(_kernel(layer, merge_lora))
                    ),
                )
            )
        if architecture == "gemma4":
            plan += [
                (f"{prefix}{name}", shape, read)
                for name, shape, read in _gemma4_layer_extras(block)
            ]
    final_norm = backbone.get_layer("final_normalization")
    plan.append(
        (
            "model.norm.weight",
            tuple(final_norm.scale.shape),
            lambda: _numpy(final_norm.scale),
        )
    )
    if not embedding.tie_weights:
        plan.append(
            (
                "lm_head.weight",
                (vocab, hidden),
                lambda: _numpy(embedding.reverse_embeddings).T,
            )
        )
    return plan


def _per_layer_embedding_plan(backbone, merge_lora):
    """Gemma 4's per-layer embedding table, its projection and norm."""
    table = backbone.get_layer("per_layer_token_embedding")
    projection = backbone.get_layer("per_layer_model_projection")
    norm = backbone.get_layer("per_layer_projection_norm")
    return [
        (
            "model.embed_tokens_per_layer.weight",
            tuple(table.embeddings.shape),
            lambda: _numpy(table.embeddings),
        ),
        (
            "model.per_layer_model_projection.weight",
            tuple(projection._kernel.shape[::-1]),
            lambda: _dense(_numpy(_kernel(projection, merge_lora))),
        ),
        (
            "model.per_layer_projection_norm.weight",
            tuple(norm.scale.shape),
            lambda: _numpy(norm.scale),
        ),
    ]
