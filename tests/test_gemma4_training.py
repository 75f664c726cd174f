"""Gemma 4 trains like Gemma 1–3: packed examples computed as if alone, LoRA on the text blocks only.

Every Gemma 4 text feature keras-hub implements is in one of the two tiny
models: `tiny:gemma4` (per-layer embeddings, KV sharing across the trailing
layers, double-wide MLPs on those, wider global heads with partial RoPE,
sliding/global layers, window 8) and `tiny:gemma4-moe` (K=V global layers
with their own KV head count, an MoE block beside the dense MLP). Multimodal
presets are stood in for by `tiny:gemma3-vision` and `tiny:gemma4-vision-audio`
(kerasgemma.tiny).
"""

import numpy as np
import pytest
from helpers import spy_fused_attention

from kerasgemma.forward import token_losses
from kerasgemma.model import enable_lora, load_causal_lm

ARCHITECTURES = ("gemma4", "gemma4-moe")


@pytest.fixture(scope="module")
def tiny_lm():
    models = {}

    def build(architecture, dtype="float32"):
        if (architecture, dtype) not in models:
            models[architecture, dtype] = load_causal_lm(f"tiny:{architecture}", dtype=dtype)
        return models[architecture, dtype]

    return build


def packed_and_alone(lm, lengths=(21, 14), padding=5, seed=0):
    """Token losses of examples packed in one row, and of each example alone.

    The examples are longer than the sliding window (8), so the local
    layers' window matters inside each example.
    """
    vocabulary = lm.backbone.vocabulary_size
    rng = np.random.default_rng(seed)
    examples = [np.concatenate([[2], rng.integers(10, vocabulary, n - 1)]) for n in lengths]
    targets = [rng.integers(10, vocabulary, n) for n in lengths]
    segment_ids = np.concatenate([[i + 1] * n for i, n in enumerate(lengths)] + [[0] * padding])[None]
    batch = {
        "token_ids": np.concatenate(examples + [np.zeros(padding, int)])[None],
        "target_ids": np.concatenate(targets + [np.zeros(padding, int)])[None],
        "segment_ids": segment_ids,
    }
    packed = np.asarray(token_losses(lm, batch), np.float32)[0]
    alone = [
        np.asarray(
            token_losses(lm, {"token_ids": x[None], "target_ids": t[None], "segment_ids": np.ones((1, len(x)), int)}),
            np.float32,
        )[0]
        for x, t in zip(examples, targets)
    ]
    starts = np.cumsum((0,) + tuple(lengths))
    return [packed[start:end] for start, end in zip(starts, starts[1:])], alone, batch


@pytest.mark.parametrize(
    "architecture", [pytest.param("gemma4", marks=pytest.mark.slow), "gemma4-moe"]
)
def test_packed_examples_equal_examples_alone(tiny_lm, architecture):
    lm = tiny_lm(architecture)
    packed, alone, batch = packed_and_alone(lm)
    for got, want in zip(packed, alone):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # Not vacuous: one segment over the whole row (attention across the
    # examples) changes the second example's losses.
    merged = dict(batch, segment_ids=(batch["segment_ids"] > 0).astype(int))
    leaked = np.asarray(token_losses(lm, merged))[0, 21:35]
    assert np.abs(leaked - alone[1]).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_packed_example_in_bfloat16_is_computed_as_if_alone(tiny_lm, architecture):
    """Positions restart per example (Gemma 4 takes them as `position_ids`):
    in bfloat16 an example at offset 40 equals the example alone."""
    lm = tiny_lm(architecture, "bfloat16")
    packed, alone, _ = packed_and_alone(lm, lengths=(40, 20), padding=0, seed=1)
    np.testing.assert_allclose(packed[1], alone[1], atol=2e-2, rtol=0)


@pytest.mark.slow
def test_fused_attention_path_with_causal_hint_matches_examples_alone(tiny_lm, monkeypatch):
    """The fused-op path (cuDNN/TPU) with `is_causal=True` beside the segment mask
    (forced on here) still gives each packed example its losses alone."""
    lm = tiny_lm("gemma4")
    calls, _ = spy_fused_attention(lm, monkeypatch)
    packed, alone, _ = packed_and_alone(lm, lengths=(12, 10), padding=2)
    assert calls and all(call.get("is_causal") for call in calls if "mask" in call)
    for got, want in zip(packed, alone):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def lora_names_by_block(lm):
    return [
        sorted(layer.name for layer in block._flatten_layers() if getattr(layer, "lora_enabled", False))
        for block in lm.backbone.transformer_layers
    ]


def test_lora_targets_skip_layers_a_block_lacks():
    """`value` on K=V global layers, `key`/`value` on KV-shared layers do not exist: skipped."""
    lm = load_causal_lm("tiny:gemma4")
    enable_lora(lm, rank=2, targets="all")
    everything = ["attention_output", "ffw_gating", "ffw_gating_2", "ffw_linear", "key", "query", "value"]
    shared = ["attention_output", "ffw_gating", "ffw_gating_2", "ffw_linear", "query"]
    assert lora_names_by_block(lm) == [everything, everything, shared, shared]

    moe = load_causal_lm("tiny:gemma4-moe")
    enable_lora(moe, rank=2)  # query,value
    kinds = [block.attention.attention_k_eq_v for block in moe.backbone.transformer_layers]
    assert lora_names_by_block(moe) == [["query"] if k_eq_v else ["query", "value"] for k_eq_v in kinds]
    assert any(kinds)


@pytest.mark.slow
def test_moe_lora_trains_attention_and_dense_mlp_experts_frozen():
    import jax
    import keras

    from kerasgemma.training.step import make_train_step, stack_micro_batches

    lm = load_causal_lm("tiny:gemma4-moe")
    enable_lora(lm, rank=2, targets="all")
    trainable = {v.path for v in lm.trainable_variables}
    assert trainable and all("lora_kernel" in path for path in trainable)
    assert not any("moe_" in path for path in trainable)
    assert any("ffw_gating" in path for path in trainable)
    # LoRA B starts at zero; give it values so the dense MLP's LoRA
    # (applied through `.kernel`, which keras-hub's MoE block reads) shows.
    rng = np.random.default_rng(0)
    for variable in lm.trainable_variables:
        variable.assign(rng.normal(0, 0.05, variable.shape).astype("float32"))
    _, _, batch = packed_and_alone(lm, lengths=(10, 8), padding=2)
    batch["loss_weights"] = (batch["segment_ids"] > 0).astype(np.float32)
    optimizer = keras.optimizers.AdamW(learning_rate=1e-2)
    optimizer.build(lm.trainable_variables)
    step = make_train_step(lm, optimizer)
    state = ([jax.numpy.array(v.value) for v in lm.trainable_variables], [jax.numpy.array(v.value) for v in optimizer.variables])
    frozen = [v.value for v in lm.non_trainable_variables]
    micro = stack_micro_batches([batch])
    losses = []
    for _ in range(3):
        state, loss, _ = step(state, frozen, micro)
        losses.append(float(loss))
    assert losses[2] < losses[0], losses


# ---------------------------------------------------------------------------
# Multimodal presets, text-only fine-tuning.


def tiny_multimodal_lm(architecture):
    """A tiny Gemma 3 (vision) or Gemma 4 (vision + audio) model, the text part as in the `tiny:` presets."""
    return load_causal_lm(f"tiny:{architecture}-vision" if architecture == "gemma3" else "tiny:gemma4-vision-audio")


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["gemma3", "gemma4"])
def test_multimodal_backbone_trains_on_text_towers_frozen(architecture):
    lm = tiny_multimodal_lm(architecture)
    towers = [lm.backbone.vision_encoder] + [getattr(lm.backbone, "audio_encoder", None)]
    towers = [tower for tower in towers if tower is not None]
    enable_lora(lm, rank=2, targets="all")
    for tower in towers:
        assert not any(getattr(layer, "lora_enabled", False) for layer in tower._flatten_layers())
        assert not tower.trainable_variables
    assert lm.trainable_variables
    # Text-only forward with empty media inputs; packing still exact.
    packed, alone, _ = packed_and_alone(lm, lengths=(12, 9), padding=3)
    for got, want in zip(packed, alone):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        assert np.isfinite(got).all()


# ---------------------------------------------------------------------------
# Sizing and layout.


@pytest.mark.parametrize("preset", ["gemma4_2b", "gemma4_4b", "gemma4_26b_a4b", "gemma4_31b"])
def test_gemma4_sizes_match_keras_hub_preset_metadata(preset):
    """Counted text weights + towers ≈ keras-hub's `params` (the towers are 0.2–0.6B)."""
    from keras_hub.src.models.gemma4.gemma4_presets import backbone_presets

    from kerasgemma.distribution.sizing import count_parameters, preset_backbone_config

    architecture, config = preset_backbone_config(preset)
    text = count_parameters(config, architecture)
    listed = backbone_presets[preset]["metadata"]["params"]
    assert 0.88 * listed < text < listed, (text, listed)


def test_gemma4_plan_on_a_tpu_v5e_8():
    """What fits where on a TPU v5e-8 (8 chips of 16 GiB), bfloat16 base weights.

    E2B's text weights are 9.3 GB (4.63B) (2.35B of them the per-layer embedding
    table, which keras-hub keeps on the device): one chip holds them with
    6.7 GiB to spare, so data parallel works once the weights may take 60%
    of a chip; under the default 50% budget the planner picks a 4 x 2 mesh.
    E4B's 14.9 GB (7.46B) leave no room on one chip: model parallel. 31B (61.4 GB)
    splits over all 8 chips, 7.7 GB each.
    """
    from kerasgemma.distribution import choose_strategy
    from kerasgemma.distribution.devices import DeviceInfo
    from kerasgemma.distribution.sizing import estimate_param_bytes, preset_backbone_config

    v5e_8 = DeviceInfo("tpu", 8, 16 * 2**30, "TPU v5 lite")

    def plan(preset, **kwargs):
        architecture, config = preset_backbone_config(preset)
        size = estimate_param_bytes(config, architecture, "bfloat16")
        strategy = choose_strategy(size, v5e_8, batch_size=8, **kwargs)
        return round(size / 1e9, 1), strategy.kind, strategy.mesh

    assert plan("gemma4_instruct_2b") == (9.3, "model", (4, 2))
    assert plan("gemma4_instruct_2b", memory_fraction=0.6) == (9.3, "data", (8, 1))
    assert plan("gemma4_instruct_4b") == (14.9, "model", (4, 2))
    assert plan("gemma4_instruct_31b") == (61.4, "model", (1, 8))


def test_gemma4_layout_covers_every_large_text_weight():
    """Every text weight bigger than a norm has a rule (and exactly one: Keras refuses two)."""
    import keras

    from kerasgemma.distribution.layout import layout_map

    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), keras.distribution.list_devices()[:1])
    for architecture in ARCHITECTURES:
        layout = layout_map(architecture, mesh)
        backbone = load_causal_lm(f"tiny:{architecture}").backbone
        for variable in backbone.weights:
            if len(variable.shape) >= 2 and "router" not in variable.path:
                assert layout[variable.path] is not None, variable.path
