"""The Tunix peer of bench/train_throughput.py: google-tunix's Gemma models (Flax NNX) with qwix LoRA, on JAX.

The model is tunix's own Gemma 1/2 or Gemma 3 (`tunix.models.gemma` /
`tunix.models.gemma3`), loaded by tunix's safetensors reader from the folder
the kerasgemma arm wrote with kerasgemma's export mapping, so it starts from the
same weights. LoRA rank 4, alpha 4, through `qwix.LoraProvider` on
`q_einsum` and `kv_einsum`: tunix computes k and v in one einsum, so LoRA
reaches k as well (kerasgemma and PEFT: q and v only; the first loss is the
same, B starting at zero). The step is tunix `PeftTrainer`'s
(`nnx.value_and_grad` over `nnx.LoRAParam`, `optimizer.update`) under
`nnx.jit`, with AdamW(5e-5, weight decay 0.01), and the loss is tunix's default
(log-softmax of the full logits against one-hot targets) on kerasgemma's own
targets and loss weights.

Packed rows: tunix takes an explicit `[batch, length, length]` attention mask,
so the mask is causal within each example. Positions restart per example,
except on Gemma 2: tunix's Gemma 2 sliding-window mask compares a query's
position with the key's *row index* (`_create_sliding_mask`), which would
hide an example's own keys once it starts past the window (8192-token rows
with Gemma 2's 4096 window), so there it gets row positions (RoPE is relative:
the same function up to bf16 rounding). Gemma 4: tunix 0.1.7 reads it only
from Google's own checkpoints (`tunix.models.gemma4.params`), not from a
transformers folder, so the arm says so.

    python bench/train_throughput.py --arms kerasgemma tunix --models gemma3_1b
"""

import json
import os
import time

import numpy as np
from peers_torch import positions_in_examples

LORA_RANK = 4


def tunix_model(folder, architecture):
    """tunix's model of the folder's weights (bf16), built from its config.json."""
    import jax.numpy as jnp

    with open(os.path.join(folder, "config.json")) as file:
        hf = json.load(file)
    common = dict(num_layers=hf["num_hidden_layers"], num_embed=hf["vocab_size"], embed_dim=hf["hidden_size"],
                  hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"], head_dim=hf["head_dim"],
                  num_kv_heads=hf["num_key_value_heads"])
    if architecture in ("gemma", "gemma2"):
        from tunix.models.gemma import model as model_lib
        from tunix.models.gemma import params_safetensors

        kinds = model_lib.AttentionType
        if architecture == "gemma":
            extra = dict(final_logit_softcap=None, use_post_attn_norm=False, use_post_ffw_norm=False,
                         attention_types=(kinds.GLOBAL,) * hf["num_hidden_layers"])
        else:
            extra = dict(final_logit_softcap=hf["final_logit_softcapping"], use_post_attn_norm=True,
                         use_post_ffw_norm=True, attn_logits_soft_cap=hf["attn_logit_softcapping"],
                         sliding_window_size=hf["sliding_window"],
                         attention_types=tuple(kinds.LOCAL_SLIDING if t == "sliding_attention" else kinds.GLOBAL
                                               for t in hf["layer_types"]))
        config = model_lib.ModelConfig(**common, **extra)
    elif architecture == "gemma3":
        from tunix.models.gemma3 import model as model_lib
        from tunix.models.gemma3 import params_safetensors

        rope = hf["rope_parameters"]
        config = model_lib.ModelConfig(**common, sliding_window_size=hf["sliding_window"],
                                       local_base_frequency=int(rope["sliding_attention"]["rope_theta"]),
                                       global_base_frequency=int(rope["full_attention"]["rope_theta"]))
    else:
        raise NotImplementedError(
            f"tunix reads {architecture} only from Google's own checkpoints (tunix.models.gemma4.params), "
            "not from a transformers folder")
    if architecture != "gemma":
        return params_safetensors.create_model_from_safe_tensors(folder, config, mesh=None, dtype=jnp.bfloat16)
    # tunix 0.1.7 reads every Gemma 1/2 folder with Gemma 2's names, so a Gemma 1 folder's pre-FFW norm
    # (transformers' `post_attention_layernorm`) lands on the post-attention norm Gemma 1 does not have:
    # "pytree structure error ... ['layers'][0]['pre_ffw_norm']['scale']". Its own mapping, that name fixed.
    from tunix.models import safetensors_loader

    def key_mapping(cfg):
        mapping = params_safetensors._get_key_and_transform_mapping(cfg)
        mapping[r"model\.layers\.([0-9]+)\.post_attention_layernorm\.weight"] = (r"layers.\1.pre_ffw_norm.scale", None)
        return mapping

    return safetensors_loader.load_and_create_model(
        file_dir=folder, model_class=model_lib.Gemma, config=config, key_mapping=key_mapping, mesh=None,
        preprocess_fn=params_safetensors._make_preprocess_fn(config), dtype=jnp.bfloat16)


def tunix_inputs(batch, architecture):
    """Token ids, positions and the `[batch, length, length]` packed causal mask tunix takes.

    Example:
    >>> import numpy as np
    >>> inputs = tunix_inputs({"token_ids": np.array([[2, 5, 2, 0]]), "segment_ids": np.array([[1, 1, 2, 0]])}, "gemma")
    >>> inputs["positions"].tolist(), inputs["attention_mask"][0].astype(int).tolist()
    ([[0, 1, 0, 0]], [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    """
    segment_ids = np.asarray(batch["segment_ids"])
    length = segment_ids.shape[1]
    if architecture == "gemma2":
        positions = np.broadcast_to(np.arange(length), segment_ids.shape)
    else:
        positions = positions_in_examples(segment_ids)
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, :, None] != 0)
    mask = same & np.tril(np.ones((length, length), bool))[None]
    return dict(input_tokens=np.asarray(batch["token_ids"], np.int32), positions=positions.astype(np.int32),
                attention_mask=mask)


def arm_tunix(folder, architecture, plan, steps, warmup):
    """Train tunix's model with qwix LoRA on `plan`'s packed batches; the first `warmup` untimed."""
    import jax
    import jax.numpy as jnp
    import optax
    import qwix
    from flax import nnx

    model = tunix_model(folder, architecture)
    provider = qwix.LoraProvider(module_path=".*q_einsum|.*kv_einsum", rank=LORA_RANK, alpha=float(LORA_RANK))
    model = qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(0), **model.get_model_input())
    optimizer = nnx.Optimizer(model, optax.adamw(5e-5, weight_decay=0.01), wrt=nnx.LoRAParam)

    def loss_fn(model, input_tokens, positions, attention_mask, target_ids, loss_weights):
        # tunix's `_default_loss_fn`, on kerasgemma's pre-shifted targets.
        logits, _ = model(input_tokens, positions, None, attention_mask)
        one_hot = jax.nn.one_hot(target_ids, logits.shape[-1]) * loss_weights[..., None]
        return -jnp.sum(jax.nn.log_softmax(logits) * one_hot) / (jnp.sum(loss_weights) + 1e-8)

    @nnx.jit
    def step(model, optimizer, inputs):
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, **inputs)
        optimizer.update(model, grads)
        return loss

    batches = [dict(tunix_inputs(b, architecture), target_ids=b["target_ids"], loss_weights=b["loss_weights"])
               for b in plan]
    started = time.perf_counter()
    loss = step(model, optimizer, batches[0])
    first_loss = float(loss)
    for batch in batches[1:warmup]:
        loss = step(model, optimizer, batch)
    float(loss)
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for batch in batches[warmup:]:
        loss = step(model, optimizer, batch)
    loss = float(loss)
    seconds = time.perf_counter() - started
    return dict(seconds=seconds, compile_seconds=compile_seconds, first_loss=first_loss, loss=loss, steps=steps,
                attention="tunix einsum, dense mask")
