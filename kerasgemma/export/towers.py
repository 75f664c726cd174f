"""The vision and audio towers of a multimodal Keras Gemma backbone, in Hugging Face form.

A multimodal backbone (every keras-hub Gemma 4 preset, Gemma 3 4B and up)
is exported as `Gemma4ForConditionalGeneration` /
`Gemma3ForConditionalGeneration`: the text part under
`model.language_model.` (our own mapping, `kerasgemma.export.weights`), the
towers and their embedders written unchanged from the Keras weights. The
tower tensor names and layouts and the `vision_config` / `audio_config`
dicts are keras-hub 0.32's own (`utils/transformers/export/gemma4.py`,
`gemma3.py`); measured against transformers 5.23 on tiny towers (tests/
test_multimodal_export.py): the names match transformers' state dict one for
one and the towers' outputs agree within float32 round-off.

Keras towers transformers cannot reproduce are refused
(`require_reproducible_towers`): transformers' Gemma 4 audio tower
hard-codes 3x3 stride-2 subsampling convolutions, sizes its input
projection as `(subsampling_conv_channels[0] // 4) * channels[1]` (exact
only when the mel bins equal the first conv's channels, as in the real
128/128 checkpoints), always has the intermediate `output_proj` and uses one
epsilon for every norm.
"""

import keras_hub
import numpy as np
from keras import ops

# HF config key -> the Keras tokenizer piece whose id it holds.
GEMMA4_MEDIA_TOKENS = {
    "boi_token_id": "<|image>",
    "image_token_id": "<|image|>",
    "eoi_token_id": "<image|>",
    "boa_token_id": "<|audio>",
    "audio_token_id": "<|audio|>",
    "eoa_token_index": "<audio|>",
    "video_token_id": "<|video|>",
}
GEMMA3_MEDIA_TOKENS = {
    "boi_token_index": "<start_of_image>",
    "image_token_index": "<img>",  # Keras' per-patch placeholder
    "eoi_token_index": "<end_of_image>",
}


# Gemma 4 clipped linears' bounds (`Gemma4ClippableLinear`), scalars in transformers.
CLIP_BOUNDS = (".input_min", ".input_max", ".output_min", ".output_max")


def towers(backbone):
    """`{"vision": encoder, "audio": encoder}` of the towers `backbone` has (empty if text-only).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> sorted(towers(build_tiny_causal_lm("gemma4-vision-audio").backbone))
    ['audio', 'vision']
    >>> towers(build_tiny_causal_lm("gemma3").backbone)
    {}
    """
    found = {
        "vision": getattr(backbone, "vision_encoder", None),
        "audio": getattr(backbone, "audio_encoder", None),
    }
    return {kind: encoder for kind, encoder in found.items() if encoder is not None}


def require_reproducible_towers(backbone):
    """Raise ValueError for a Keras tower transformers' classes would compute differently.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> require_reproducible_towers(build_tiny_causal_lm("gemma4-vision-audio").backbone)
    """
    audio = towers(backbone).get("audio")
    if audio is None:
        return
    problems = []
    if tuple(map(tuple, audio.sscp_kernel_sizes)) != ((3, 3), (3, 3)):
        problems.append(f"subsampling kernels {audio.sscp_kernel_sizes} (transformers: 3x3)")
    if tuple(map(tuple, audio.sscp_stride_sizes)) != ((2, 2), (2, 2)):
        problems.append(f"subsampling strides {audio.sscp_stride_sizes} (transformers: 2x2)")
    first, second = audio.sscp_conv_channels
    keras_in = audio.subsample_conv_projection.input_proj.kernel.shape[0]
    if keras_in != (first // 4) * second:
        problems.append(
            f"{audio.input_feat_size} mel bins with conv channels {tuple(audio.sscp_conv_channels)}: "
            f"transformers sizes the input projection {(first // 4) * second}, Keras {keras_in}"
        )
    if audio.output_proj is None:
        problems.append("no output_proj (transformers always has one)")
    if getattr(audio, "reduction_factor", 1) != 1:
        problems.append(f"reduction_factor {audio.reduction_factor} (transformers: 1)")
    if audio.sscp_norm_eps != audio.norm_eps:
        problems.append(f"subsampling norm epsilon {audio.sscp_norm_eps} != {audio.norm_eps}")
    if problems:
        raise ValueError(
            "This Gemma 4 audio tower cannot be reproduced by transformers' Gemma4AudioModel: "
            + "; ".join(problems) + "."
        )


def _token_ids(tokenizer, pieces):
    ids = {}
    for key, piece in pieces.items():
        try:
            token_id = tokenizer.token_to_id(piece)
        except (KeyError, ValueError):
            continue
        if token_id is not None and token_id >= 0:
            ids[key] = int(token_id)
    return ids


def multimodal_config(architecture, backbone, tokenizer, text_config):
    """The ConditionalGeneration `config.json` around a text config of ours.

    Args:
        architecture: "gemma3" or "gemma4".
        backbone: the multimodal Keras backbone.
        tokenizer: its keras-hub tokenizer (media token ids).
        text_config: dict. Our `gemma3_text` / `gemma4_text` config.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma3-vision")
    >>> config = multimodal_config("gemma3", lm.backbone, lm.preprocessor.tokenizer, {"dtype": "float32"})
    >>> config["architectures"], config["mm_tokens_per_image"], config["vision_config"]["image_size"]
    (['Gemma3ForConditionalGeneration'], 1, 16)
    """
    require_reproducible_towers(backbone)
    text_config = {k: v for k, v in text_config.items() if k != "architectures"}
    shared = {
        # vocab_size: mlx-lm 0.32's gemma3/gemma4 read it at the top level
        # (defaults 262208 / 262144, then refuse the weights).
        key: text_config[key]
        for key in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "dtype")
        if key in text_config
    }
    found = towers(backbone)
    if architecture == "gemma4":
        from keras_hub.src.utils.transformers.export import gemma4 as keras_hub_gemma4

        config = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4"}
        config.update(shared, text_config=text_config)
        if "vision" in found:
            config["vision_config"] = keras_hub_gemma4._build_vision_config(found["vision"])
            # Soft tokens per image at the encoder's own size (the processor default is 280).
            config["vision_soft_tokens_per_image"] = found["vision"].num_vision_tokens_per_image
        if "audio" in found:
            config["audio_config"] = dict(
                keras_hub_gemma4._build_audio_config(found["audio"]),
                use_clipped_linears=_audio_clipped(found["audio"]),
            )
        config.update(_token_ids(tokenizer, GEMMA4_MEDIA_TOKENS))
        return config
    if architecture == "gemma3":
        vision = found["vision"]
        image_encoder = vision.get_layer("image_encoder")
        pool_size = vision.get_layer("pooling").pool_size
        config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3"}
        config.update(shared, text_config=text_config)
        config["vision_config"] = {
            "model_type": "siglip_vision_model",
            "image_size": image_encoder.image_size,
            "patch_size": image_encoder.patch_size,
            "num_attention_heads": image_encoder.num_heads,
            "hidden_size": image_encoder.hidden_dim,
            "num_hidden_layers": image_encoder.num_layers,
            "intermediate_size": image_encoder.intermediate_dim,
            "layer_norm_eps": image_encoder.layer_norm_epsilon,
            "vision_use_head": False,
        }
        config["mm_tokens_per_image"] = ((image_encoder.image_size // image_encoder.patch_size) // pool_size) ** 2
        config.update(_token_ids(tokenizer, GEMMA3_MEDIA_TOKENS))
        return config
    raise ValueError(f"{architecture} has no multimodal transformers class.")


def _is_gemma4(backbone):
    return isinstance(backbone, keras_hub.models.Gemma4Backbone)


def _audio_clipped(audio):
    return any(getattr(layer, "use_clipped_linears", False) for layer in audio._flatten_layers())


def tower_tensor_plan(backbone):
    """`(hf_name, shape, read)` of every tower and embedder tensor, unchanged from Keras.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> plan = tower_tensor_plan(build_tiny_causal_lm("gemma3-vision").backbone)
    >>> [name for name, _, _ in plan if "projector" in name]
    ['model.multi_modal_projector.mm_soft_emb_norm.weight', 'model.multi_modal_projector.mm_input_projection_weight']
    """
    found = towers(backbone)
    weights = {}
    if _is_gemma4(backbone):
        from keras_hub.src.utils.transformers.export import gemma4 as keras_hub_gemma4

        if "vision" in found:
            keras_hub_gemma4._add_vision_encoder_weights(weights, found["vision"])
        if "audio" in found:
            keras_hub_gemma4._add_audio_encoder_weights(weights, found["audio"])
    elif "vision" in found:
        weights = _gemma3_tower_weights(backbone)
    plan = []
    for name, tensor in weights.items():
        shape = tuple(int(d) for d in tensor.shape)
        if name.endswith(CLIP_BOUNDS):
            # Keras keeps the clipping bounds as (1,), transformers as ()
            # (keras-hub 0.32 writes (1,): transformers refuses the folder).
            shape = ()
        plan.append((name, shape, lambda tensor=tensor, shape=shape: ops.convert_to_numpy(tensor).reshape(shape)))
    return plan


def _gemma3_tower_weights(backbone):
    """keras-hub's Gemma 3 weight map, tower and projector entries only."""
    from keras_hub.src.utils.transformers.export import gemma3 as keras_hub_gemma3

    weights = keras_hub_gemma3.get_gemma3_weights_map(backbone, include_lm_head=True)
    return {
        name: tensor
        for name, tensor in weights.items()
        if name.startswith(("model.vision_tower.", "model.multi_modal_projector."))
    }


def tower_outputs_keras(backbone, inputs):
    """Outputs of the Keras towers (float32 numpy) on `random_tower_inputs`.

    Returns `{"vision": (tokens, hidden), "audio": (frames, hidden)}`.
    """
    outputs = {}
    found = towers(backbone)
    if "vision" in found:
        if _is_gemma4(backbone):
            out = found["vision"]({
                "pixel_values": inputs["pixel_values"][None],
                "pixel_position_ids": inputs["pixel_position_ids"][None],
            })
        else:
            out = found["vision"](inputs["images"][None])
        outputs["vision"] = np.asarray(ops.convert_to_numpy(out), np.float32).reshape(-1, backbone.hidden_dim)
    if "audio" in found:
        out = found["audio"](inputs["audio_mel"], inputs["audio_mel_mask"])
        outputs["audio"] = np.asarray(ops.convert_to_numpy(out), np.float32).reshape(-1, backbone.hidden_dim)
    return outputs


def tower_outputs_torch(model, inputs):
    """The same towers' outputs from a transformers ConditionalGeneration model."""
    import torch

    outputs = {}
    with torch.no_grad():
        if "pixel_values" in inputs:
            features = model.get_image_features(
                pixel_values=torch.from_numpy(inputs["pixel_values"]),
                image_position_ids=torch.from_numpy(inputs["pixel_position_ids"].astype(np.int64)),
            )
            outputs["vision"] = torch.cat(list(features.pooler_output)).float().numpy()
        if "images" in inputs:
            pixels = torch.from_numpy(inputs["images"].transpose(0, 3, 1, 2).copy())
            features = model.get_image_features(pixel_values=pixels)
            pooled = getattr(features, "pooler_output", features)
            outputs["vision"] = pooled.reshape(-1, pooled.shape[-1]).float().numpy()
        if "audio_mel" in inputs:
            features = model.model.get_audio_features(
                input_features=torch.from_numpy(inputs["audio_mel"]),
                input_features_mask=torch.from_numpy(inputs["audio_mel_mask"]),
            )
            pooled = features.pooler_output
            outputs["audio"] = pooled.reshape(-1, pooled.shape[-1]).float().numpy()
    return outputs


def random_tower_inputs(backbone, seed=0, audio_frames=32):
    """One random image (and one random audio clip) in both libraries' layouts.

    Gemma 4: `pixel_values` `(1, patches, 3·p²)` in [0, 1) and their `(x, y)`
    `pixel_position_ids`; Gemma 3: `images` `(1, H, W, 3)` in [-1, 1);
    audio: `audio_mel` `(1, frames, mel bins)` and an all-true mask.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> inputs = random_tower_inputs(build_tiny_causal_lm("gemma4-vision-audio").backbone)
    >>> {k: v.shape for k, v in inputs.items()}["pixel_values"]
    (1, 16, 48)
    """
    rng = np.random.default_rng(seed)
    found = towers(backbone)
    inputs = {}
    if "vision" in found:
        vision = found["vision"]
        if _is_gemma4(backbone):
            side = vision.image_size // vision.patch_size
            inputs["pixel_values"] = rng.random((1, side * side, 3 * vision.patch_size**2), dtype=np.float32)
            ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
            inputs["pixel_position_ids"] = np.stack([xs.ravel(), ys.ravel()], -1)[None].astype(np.int32)
        else:
            size = vision.get_layer("image_encoder").image_size
            inputs["images"] = rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    if "audio" in found:
        audio = found["audio"]
        inputs["audio_mel"] = rng.normal(0, 1, (1, audio_frames, audio.input_feat_size)).astype(np.float32)
        inputs["audio_mel_mask"] = np.ones((1, audio_frames), dtype=bool)
    return inputs
