"""Map Keras Gemma weights to Hugging Face tensor names and layouts.

The inverse of keras-hub's `convert_gemma.py` / `convert_gemma3.py`, with
three things keras-hub 0.32's own exporter gets wrong done right (docs/facts.md
#keras-hub-exporter): kernels are read through `layer.kernel` so LoRA is merged (the
exporter reads the frozen base and drops LoRA), every key/value head is kept
(it keeps only the first), and Gemma 2 norms get their Gemma 2 names.

Tensors are produced one at a time by generators, so a writer can stream
them to disk without a second copy of the model in host memory.
"""

import numpy as np

from keras import ops

from kerasgemma.export.hf_config import detect_architecture


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
PROJECTIONS = {
    "self_attn.q_proj": (lambda block: block.attention.query_dense, _heads_in),
    "self_attn.k_proj": (lambda block: block.attention.key_dense, _heads_in),
    "self_attn.v_proj": (lambda block: block.attention.value_dense, _heads_in),
    "self_attn.o_proj": (lambda block: block.attention.output_dense, _heads_out),
    "mlp.gate_proj": (lambda block: block.gating_ffw, _dense),
    "mlp.up_proj": (lambda block: block.gating_ffw_2, _dense),
    "mlp.down_proj": (lambda block: block.ffw_linear, _dense),
}


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
    if architecture == "gemma3":
        norms["self_attn.q_norm"] = block.attention.query_norm
        norms["self_attn.k_norm"] = block.attention.key_norm
    return norms


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
    """
    return {name: shape for name, shape, _ in _tensor_plan(backbone, True)}


def hf_tensors(backbone, merge_lora=True):
    """Yield `(hf_name, numpy_array)` for every weight, one at a time.

    Args:
        backbone: a Gemma 1/2/3 keras-hub backbone, LoRA enabled or not.
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


def _tensor_plan(backbone, merge_lora):
    """(hf_name, shape, read) triples; `read()` materialises one tensor."""
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
