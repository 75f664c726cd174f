"""Training on 8 devices equals training on one: data parallel 8×1, model parallel 1×8 and 2×4.

For every architecture, Gemma 4 dense (per-layer embeddings, KV sharing) and
MoE (experts split over `model`) included.

JAX fixes its device count when it starts, and the rest of the suite runs on
one CPU device in this pytest process, so the checks run this file as a
script in a fresh Python with `XLA_FLAGS=--xla_force_host_platform_device_count=8`
(the chip count of a TPU v5e-8, the core count of a v3-8). One script run
checks every architecture (one process start and one JAX warm-up instead
of five: about a minute less on 2 cores) and prints one JSON line of results
by architecture, with the traceback of any architecture that failed.
"""

import json
import os
import subprocess
import sys

import pytest

MESHES = {"data 8x1": ("data", "8x1"), "model 1x8": ("model", "1x8"), "model 2x4": ("model", "2x4")}
ARCHITECTURES = ("gemma", "gemma2", "gemma3", "gemma4", "gemma4-moe")
STEPS = 3


def run_on_8_devices(*args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results_by_architecture():
    return run_on_8_devices(*ARCHITECTURES)


@pytest.mark.slow
@pytest.mark.xdist_group("eight_device_meshes")  # one worker runs the script once for all of them
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_eight_devices_match_one(results_by_architecture, architecture):
    result = results_by_architecture[architecture]
    assert "error" not in result, result.get("error")
    reference = result["none"]
    assert len(reference["losses"]) == STEPS
    assert set(result) == {"none", *meshes_for(architecture)}
    for name in meshes_for(architecture):
        got = result[name]
        assert got["devices"] == 8
        # Same batches, same seed: only the order of float32 reductions differs.
        assert got["losses"] == pytest.approx(reference["losses"], rel=2e-5, abs=1e-6), name
        assert got["generated"] == reference["generated"], name
        assert got["export_equal"], name
        assert got["sharded_kernels"] > 0 or name == "data 8x1", name
        assert got["unsharded_report"] == [], name
        assert got["compilations"] == 1, name
    # The `tiny:` presets' 4 query heads cannot split 8 ways: reported.
    if "model 1x8" in result:
        assert "decoder_block_0/attention/query/kernel" in result["model 1x8"]["tiny_unsharded"]
    assert "decoder_block_0/attention/query/kernel" not in result["model 2x4"]["tiny_unsharded"]


def meshes_for(architecture):
    """Every mesh for Gemma 1 and 3, whose layout maps Gemma 2 and 4 extend;
    for Gemma 2 (Gemma 1's backbone class and layout) and Gemma 4 (its own
    weights, twice the compile time) the 2x4 mesh, which splits weights over
    `model` and batches over `batch` at once: the other two are each one of
    its axes."""
    return MESHES if architecture in ("gemma", "gemma3") else {"model 2x4": MESHES["model 2x4"]}


# ---------------------------------------------------------------------------
# The script: everything below runs in the 8-device subprocess.


def sharding_friendly_lm(architecture):
    """A tiny LM whose heads, widths and vocabulary all divide by 8, so every
    large kernel is really split on each mesh (the `tiny:` presets have 4
    query heads, 1 key/value head and an odd vocabulary, which exercise the
    other path: axes dropped where they do not divide)."""
    from kerasgemma.tiny import _CLASSES, tiny_backbone_config

    backbone_cls, _, _, lm_cls = _CLASSES[architecture]
    config = dict(tiny_backbone_config(architecture, 552, num_key_value_heads=8), num_query_heads=8)
    if config.get("enable_moe_block"):
        config["num_experts"] = 8  # experts split over `model` (26B-A4B has 128)
    import keras

    keras.utils.set_random_seed(0)
    return lm_cls(backbone=backbone_cls(**config, dtype="float32"), preprocessor=None)


def make_batches(steps, vocabulary=546, micro=2, rows=8, length=16):
    """Packed rows: two examples and some padding per row, loss on part."""
    import numpy as np

    rng = np.random.default_rng(0)
    batches = []
    for _ in range(steps):
        segment = np.zeros((micro, rows, length), np.int32)
        segment[..., :7], segment[..., 7:13] = 1, 2
        batches.append(
            {
                "token_ids": rng.integers(4, vocabulary, (micro, rows, length), dtype=np.int32),
                "target_ids": rng.integers(4, vocabulary, (micro, rows, length), dtype=np.int32),
                "loss_weights": (segment != 0) & (rng.random((micro, rows, length)) < 0.7),
                "segment_ids": segment,
            }
        )
    return batches


def pin_state_layout(step, state):
    """Re-jit `make_train_step`'s step so the new state keeps the old one's layout.

    Left free, XLA shards the LoRA optimizer moments its own way on the first
    step's output (e.g. `P(None, 'model')` for a replicated input), and the
    second step compiles again. `make_train_step` should take these
    shardings itself (`out_shardings=(state_shardings, None, None)`).
    """
    import jax

    shardings = jax.tree.map(lambda array: array.sharding, state)
    return jax.jit(step.__wrapped__, donate_argnums=0, out_shardings=(shardings, None, None))


def train_losses(causal_lm, batches):
    import jax
    import keras

    from kerasgemma.distribution import shard_batch
    from kerasgemma.model import enable_lora
    from kerasgemma.training.step import make_train_step

    enable_lora(causal_lm, rank=2, targets="all")
    optimizer = keras.optimizers.AdamW(learning_rate=1e-3)
    optimizer.build(causal_lm.trainable_variables)
    step = make_train_step(causal_lm, optimizer)
    state = (
        [jax.numpy.array(v.value) for v in causal_lm.trainable_variables],
        [jax.numpy.array(v.value) for v in optimizer.variables],
    )
    step = pin_state_layout(make_train_step(causal_lm, optimizer), state)
    non_trainable = [v.value for v in causal_lm.non_trainable_variables]
    losses = []
    for batch in batches:
        state, loss, _ = step(state, non_trainable, shard_batch(batch, batch_axis=1))
        losses.append(float(loss))
    # One compilation: the updated state comes back laid out as it went in.
    return losses, step._cache_size()


def randomize_lora(causal_lm):
    """Non-zero LoRA B so the export really merges something."""
    import numpy as np

    rng = np.random.default_rng(1)
    for variable in causal_lm.trainable_variables:
        variable.assign(rng.normal(0, 0.05, variable.shape).astype("float32"))


def main(architectures):
    """Check each architecture; one JSON line: its results, or the traceback that stopped it."""
    import tempfile
    import traceback

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for architecture in architectures:
            try:
                results[architecture] = check_architecture(architecture, os.path.join(scratch, architecture))
            except Exception:  # reported to the test of that architecture; the others still run
                results[architecture] = {"error": traceback.format_exc()}
    print(json.dumps(results))


def check_architecture(architecture, scratch):
    """Train, generate and export `architecture` with no mesh and on each of its meshes; exports go under `scratch`."""
    import keras

    from kerasgemma.distribution import choose_strategy, configure, detect_devices, pad_to_replicas, report_unsharded
    from kerasgemma.export import export_merged
    from kerasgemma.model import enable_lora, load_causal_lm

    devices = detect_devices()
    assert devices.count == 8, devices
    batches = make_batches(STEPS)
    results = {}
    meshes = meshes_for(architecture)
    for name, (kind, mesh) in {"none": ("none", None), **meshes}.items():
        strategy = choose_strategy(1, devices, batch_size=8, distribution=kind, mesh=mesh)
        configure(strategy, architecture)
        friendly = sharding_friendly_lm(architecture)
        losses, compilations = train_losses(friendly, batches)
        sharded = sum(
            not v.value.sharding.is_fully_replicated for v in friendly.backbone.variables
        )
        unsharded = report_unsharded(friendly, threshold_bytes=4096)

        causal_lm = load_causal_lm(f"tiny:{architecture}", dtype="float32")
        enable_lora(causal_lm, rank=2, targets="all")
        randomize_lora(causal_lm)
        tiny_unsharded = [path for path, _, _ in report_unsharded(causal_lm, threshold_bytes=4096)]
        prompts, count = pad_to_replicas(["你好", "Gemma is"])
        generated = causal_lm.generate(prompts, max_length=12)[:count]
        folder = export_merged(causal_lm, os.path.join(scratch, name), dtype="float32")
        files = {
            f: open(os.path.join(folder, f), "rb").read()
            for f in sorted(os.listdir(folder))
            if f.endswith(".safetensors")
        }
        results[name] = {
            "devices": len(keras.distribution.list_devices()) if kind != "none" else 8,
            "losses": losses,
            "compilations": compilations,
            "tiny_unsharded": tiny_unsharded,
            "generated": [str(text) for text in generated],
            "files": files,
            "sharded_kernels": sharded,
            "unsharded_report": unsharded,
        }
    reference_files = results["none"].pop("files")
    for name in meshes:
        results[name]["export_equal"] = results[name].pop("files") == reference_files
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
