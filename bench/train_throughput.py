"""LoRA fine-tuning throughput: kerasgemma vs the stock keras-hub recipe vs transformers + PEFT.

Every arm trains the same randomly initialised model shape, LoRA rank 4 on the
query/value projections, AdamW, on the *same* token sequences, whose lengths
follow an HC3-like distribution (see `hc3_like_lengths`). Each arm batches
them its own way — which is the point: useful (non-padding) tokens per second
is the figure that matters. Arms run one per subprocess so each peak-memory
figure is its own.

    python bench/train_throughput.py --smoke                 # tiny shapes, CPU, seconds
    python bench/train_throughput.py --out bench/results.json   # every arm on Gemma 2B, kerasgemma on Gemma 2 / 3

Columns: useful tokens/s, step time, peak device memory, compile (first-step)
time, loss after the timed steps, and each arm's speed relative to kerasgemma.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SEQUENCE_LENGTH = 1024
BATCH_SIZE = 8
LORA_RANK = 4

# Keras-hub backbone arguments; Gemma 1/2 keras `intermediate_dim` is twice HF's.
SHAPES = {
    "gemma_2b": dict(
        arch="gemma",
        keras=dict(vocabulary_size=256000, num_layers=18, num_query_heads=8, num_key_value_heads=1,
                   hidden_dim=2048, intermediate_dim=32768, head_dim=256),
    ),
    "gemma2_2b": dict(
        arch="gemma2",
        keras=dict(vocabulary_size=256000, num_layers=26, num_query_heads=8, num_key_value_heads=4,
                   hidden_dim=2304, intermediate_dim=18432, head_dim=256, query_head_dim_normalize=True,
                   use_post_ffw_norm=True, use_post_attention_norm=True, attention_logit_soft_cap=50.0,
                   final_logit_soft_cap=30.0, use_sliding_window_attention=True, sliding_window_size=4096),
    ),
    "gemma3_1b": dict(
        arch="gemma3",
        keras=dict(vocabulary_size=262144, image_size=896, num_layers=26, num_query_heads=4,
                   num_key_value_heads=1, hidden_dim=1152, intermediate_dim=6912, head_dim=256,
                   query_head_dim_normalize=True, use_query_key_norm=True, use_post_ffw_norm=True,
                   use_post_attention_norm=True, use_sliding_window_attention=True, sliding_window_size=512,
                   local_rope_scaling_factor=1.0, global_rope_scaling_factor=1.0, vision_encoder=None),
    ),
    "tiny": dict(
        arch="gemma",
        keras=dict(vocabulary_size=1024, num_layers=2, num_query_heads=4, num_key_value_heads=1,
                   hidden_dim=64, intermediate_dim=128, head_dim=16),
    ),
}


def _gemma4_shape(config):
    """A Gemma 4 text shape (random weights, no vision/audio tower)."""
    return dict(arch="gemma4", keras=dict(config, vision_encoder=None, audio_encoder=None))


def _gemma4_shapes():
    # Real E2B/E4B shapes from the preset configs kerasgemma sizes runs with.
    from kerasgemma.distribution.sizing import GEMMA4_TEXT_CONFIGS
    from kerasgemma.tiny import tiny_backbone_config

    return {
        "gemma4_e2b": _gemma4_shape(GEMMA4_TEXT_CONFIGS["gemma4_2b"]),
        "gemma4_e4b": _gemma4_shape(GEMMA4_TEXT_CONFIGS["gemma4_4b"]),
        "tiny_gemma4": _gemma4_shape(tiny_backbone_config("gemma4", 1024)),
    }


SHAPES.update(_gemma4_shapes())
ARMS = ("kerasgemma", "kerasgemma_reference_loss", "kerashub_fit_bf16", "kerashub_fit_fp32", "hf_peft_eager", "hf_peft_compile")


def hc3_like_lengths(count, seed=0, max_length=SEQUENCE_LENGTH):
    """Prompt and answer lengths in tokens, HC3-like: median total about 180, long tail.

    Prompt ~ lognormal(median 40, sigma 0.6), answer ~ lognormal(median 135,
    sigma 0.8); totals (BOS and turn markers included) clipped to
    [16, max_length + 1].
    """
    rng = np.random.default_rng(seed)
    prompt = np.maximum(rng.lognormal(np.log(40), 0.6, count).astype(int), 4)
    answer = np.maximum(rng.lognormal(np.log(135), 0.8, count).astype(int), 4)
    total = np.clip(prompt + answer, 16, max_length + 1)
    answer = np.minimum(answer, total - 2)
    return total - answer, answer


def make_sequences(count, vocabulary_size, seed=0, max_length=SEQUENCE_LENGTH):
    """Token ids (BOS first) and loss masks (answer tokens) of `count` examples."""
    prompt, answer = hc3_like_lengths(count, seed, max_length)
    rng = np.random.default_rng(seed + 1)
    sequences = []
    for p, a in zip(prompt, answer):
        ids = rng.integers(10, vocabulary_size, p + a).astype(np.int32)
        ids[0] = 2
        mask = np.zeros(p + a, np.int8)
        mask[p:] = 1
        sequences.append((ids, mask))
    return sequences


# --- arms -------------------------------------------------------------------------------


def _jax_peak_bytes():
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _keras_model(shape, dtype):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    spec = SHAPES[shape]
    classes = {
        "gemma3": (keras_hub.models.Gemma3Backbone, keras_hub.models.Gemma3CausalLM),
        "gemma4": (keras_hub.models.Gemma4Backbone, keras_hub.models.Gemma4CausalLM),
    }
    backbone_cls, lm_cls = classes.get(spec["arch"], (keras_hub.models.GemmaBackbone, keras_hub.models.GemmaCausalLM))
    backbone = backbone_cls(**spec["keras"], dtype=dtype)
    return lm_cls(backbone=backbone, preprocessor=None)


def kerasgemma_setup(shape, sequences, steps, warmup, dtype="bfloat16", fused_loss=True, batch_size=BATCH_SIZE,
                     lora_path="beside", lora_targets="query,value"):
    """The model, the kerasgemma step, its state and `warmup + steps` packed batches, ready to time.

    `lora_path`: "beside" (kerasgemma's `x·W + (alpha/r)·(x·A)·B`) or Keras'
    "merged" `x·(W + (alpha/r)·A·B)`, see `kerasgemma.lora_path`."""
    import jax

    from kerasgemma.config import TrainConfig
    from kerasgemma.data import Batches, TokenizedExample
    from kerasgemma.model import enable_lora
    from kerasgemma.training import make_optimizer, make_train_step, stack_micro_batches

    lm = _keras_model(shape, dtype)
    enable_lora(lm, LORA_RANK, targets=lora_targets, lora_path=lora_path)
    batches = Batches([TokenizedExample(ids, mask) for ids, mask in sequences], batch_size, SEQUENCE_LENGTH)
    config = TrainConfig(learning_rate=5e-5, weight_decay=0.01, max_grad_norm=None, schedule="constant")
    optimizer = make_optimizer(config, steps + warmup, lm.trainable_variables)
    step = make_train_step(lm, optimizer, fused_loss=fused_loss)
    state = ([jax.numpy.array(v.value) for v in lm.trainable_variables], [v.value for v in optimizer.variables])
    frozen = [v.value for v in lm.non_trainable_variables]
    iterator = batches.epoch(0)
    plan = [stack_micro_batches([next(iterator)]) for _ in range(warmup + steps)]
    return lm, step, state, frozen, plan


def time_train_steps(step, state, frozen, plan, warmup):
    """Run `plan`'s batches through a kerasgemma train step: the first `warmup` (compile included) untimed.

    Returns a dict with useful_tokens (non-padding tokens of the timed batches), seconds, compile_seconds
    and the last loss.
    """
    started = time.perf_counter()
    for batch in plan[:warmup]:
        state, loss, _ = step(state, frozen, batch)
    float(loss)
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for batch in plan[warmup:]:
        state, loss, _ = step(state, frozen, batch)
    loss = float(loss)
    seconds = time.perf_counter() - started
    useful = sum(int(np.count_nonzero(b["segment_ids"])) for b in plan[warmup:])
    return dict(useful_tokens=useful, seconds=seconds, compile_seconds=compile_seconds, loss=loss)


def arm_kerasgemma(shape, sequences, steps, warmup, dtype="bfloat16", fused_loss=True, batch_size=BATCH_SIZE,
                   lora_path="beside", lora_targets="query,value"):
    """kerasgemma defaults: packed rows, bf16 base weights, float32 LoRA beside the frozen kernel, jitted
    donated step, sliced vocabulary projection with a fused loss gradient (`fused_loss=False`: the lever off)."""
    _, step, state, frozen, plan = kerasgemma_setup(shape, sequences, steps, warmup, dtype, fused_loss, batch_size,
                                                    lora_path, lora_targets)
    timed = time_train_steps(step, state, frozen, plan, warmup)
    return dict(**timed, computed_tokens=steps * batch_size * SEQUENCE_LENGTH,
                steps=steps, peak_bytes=_jax_peak_bytes())


def _padded(sequences, length):
    count = len(sequences)
    token_ids = np.zeros((count, length), np.int32)
    targets = np.zeros((count, length), np.int32)
    weights = np.zeros((count, length), np.float32)
    for row, (ids, mask) in enumerate(sequences):
        n = len(ids) - 1
        token_ids[row, :n], targets[row, :n], weights[row, :n] = ids[:-1], ids[1:], mask[1:]
    return token_ids, targets, weights


def arm_kerashub_fit(shape, sequences, steps, warmup, dtype):
    """The reference notebook: enable_lora(4), AdamW(5e-5, wd 0.01), fit on examples padded to 1024.

    `keras.Model.fit` on NumPy arrays is the same computation as keras-hub's
    `Task.fit` without the tf.data pipeline (which needs TensorFlow).
    """
    import keras

    lm = _keras_model(shape, dtype)
    lm.backbone.enable_lora(rank=LORA_RANK)
    optimizer = keras.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01)
    optimizer.exclude_from_weight_decay(var_names=["bias", "scale"])
    lm.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=optimizer,
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    count = (warmup + steps) * BATCH_SIZE
    token_ids, targets, weights = _padded(sequences[:count], SEQUENCE_LENGTH)
    x = {"token_ids": token_ids, "padding_mask": token_ids != 0}
    x["padding_mask"][:, 0] = True
    fit = lambda sl: keras.Model.fit(lm, {k: v[sl] for k, v in x.items()}, targets[sl], sample_weight=weights[sl],
                                     batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0)
    started = time.perf_counter()
    fit(slice(0, warmup * BATCH_SIZE))
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    history = fit(slice(warmup * BATCH_SIZE, count))
    seconds = time.perf_counter() - started
    useful = int(sum(len(ids) - 1 for ids, _ in sequences[warmup * BATCH_SIZE : count]))
    return dict(useful_tokens=useful, computed_tokens=steps * BATCH_SIZE * SEQUENCE_LENGTH, seconds=seconds,
                steps=steps, compile_seconds=compile_seconds, loss=float(history.history["loss"][-1]),
                peak_bytes=_jax_peak_bytes())


def _hf_model(shape):
    import transformers

    spec = SHAPES[shape]
    k = spec["keras"]
    common = dict(vocab_size=k["vocabulary_size"], hidden_size=k["hidden_dim"], num_hidden_layers=k["num_layers"],
                  num_attention_heads=k["num_query_heads"], num_key_value_heads=k["num_key_value_heads"],
                  head_dim=k["head_dim"], hidden_activation="gelu_pytorch_tanh")
    if spec["arch"] == "gemma":
        config = transformers.GemmaConfig(intermediate_size=k["intermediate_dim"] // 2, **common)
        cls = transformers.GemmaForCausalLM
    elif spec["arch"] == "gemma4":
        config = transformers.Gemma4TextConfig.from_dict(_gemma4_hf_settings(k))
        cls = transformers.Gemma4ForCausalLM
    elif spec["arch"] == "gemma2":
        config = transformers.Gemma2Config(
            intermediate_size=k["intermediate_dim"] // 2, query_pre_attn_scalar=k["head_dim"],
            attn_logit_softcapping=k["attention_logit_soft_cap"], final_logit_softcapping=k["final_logit_soft_cap"],
            sliding_window=k["sliding_window_size"], **common)
        cls = transformers.Gemma2ForCausalLM
    else:
        config = transformers.Gemma3TextConfig(
            intermediate_size=k["intermediate_dim"], query_pre_attn_scalar=k["head_dim"],
            sliding_window=k["sliding_window_size"], **common)
        cls = transformers.Gemma3ForCausalLM
    config._attn_implementation = "sdpa"
    return cls(config)


def _gemma4_hf_settings(keras_config):
    """transformers' `gemma4_text` config of a Keras Gemma 4 shape, written by kerasgemma's exporter.

    The exporter reads a built backbone's layers, and building Gemma 4 E4B
    takes minutes: a backbone of the same structure (layers, heads, layer
    pattern, rope, KV sharing, MoE) with small widths is built on the host
    instead, and the widths in its config are then set to the shape's.
    """
    import types

    import keras_hub

    from kerasgemma.distribution import on_host
    from kerasgemma.export.hf_config import hf_config

    k = keras_config
    small = dict(k, vocabulary_size=512, hidden_dim=32, intermediate_dim=64, head_dim=8)
    small.update({key: width for key, width in (("global_head_dim", 16), ("hidden_size_per_layer_input", 4),
                                                 ("expert_intermediate_dim", 16)) if k.get(key)})
    with on_host(log=lambda _: None):
        backbone = keras_hub.models.Gemma4Backbone(**small)
    config = hf_config(backbone, types.SimpleNamespace(pad_token_id=0, start_token_id=2, end_token_id=1))
    config.update(
        vocab_size=k["vocabulary_size"], hidden_size=k["hidden_dim"], intermediate_size=k["intermediate_dim"],
        head_dim=k["head_dim"], global_head_dim=k.get("global_head_dim") or k["head_dim"],
        hidden_size_per_layer_input=k.get("hidden_size_per_layer_input", 0),
        vocab_size_per_layer_input=k.get("vocab_size_per_layer_input") or k["vocabulary_size"],
        moe_intermediate_size=k.get("expert_intermediate_dim"),
    )
    return config


def arm_hf_peft(shape, sequences, steps, warmup, compile_model):
    """transformers + PEFT, bf16, sdpa, batches padded to their longest example (TRL without packing);
    `compile_model`: every decoder layer through `torch.compile(dynamic=True)`."""
    import peft
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = _hf_model(shape).to(device=device, dtype=torch.bfloat16)
    model = peft.get_peft_model(model, peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK,
                                                       target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.01)
    if compile_model:
        # Regional compilation (PyTorch's advice for transformers): each decoder
        # layer is compiled, and all layers share one graph, so compile time is
        # that of one layer instead of the whole model.
        for layer in model.get_base_model().model.layers:
            layer.compile(dynamic=True)
    forward = model

    def batch(index):
        chunk = sequences[index * BATCH_SIZE : (index + 1) * BATCH_SIZE]
        length = max(len(ids) for ids, _ in chunk)
        ids = torch.zeros((len(chunk), length), dtype=torch.long)
        labels = torch.full((len(chunk), length), -100, dtype=torch.long)
        attention = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, (tokens, mask) in enumerate(chunk):
            ids[row, : len(tokens)] = torch.from_numpy(tokens.astype(np.int64))
            labels[row, : len(tokens)] = torch.where(torch.from_numpy(mask) == 1, ids[row, : len(tokens)], -100)
            attention[row, : len(tokens)] = 1
        return ids.to(device), labels.to(device), attention.to(device), int(sum(len(t) - 1 for t, _ in chunk))

    def train_step(index):
        ids, labels, attention, useful = batch(index)
        loss = forward(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss, useful

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    started = time.perf_counter()
    for index in range(warmup):
        loss, _ = train_step(index)
    sync()
    compile_seconds = time.perf_counter() - started
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    useful = 0
    started = time.perf_counter()
    for index in range(warmup, warmup + steps):
        loss, tokens = train_step(index)
        useful += tokens
    sync()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return dict(useful_tokens=useful, computed_tokens=None, seconds=seconds, steps=steps,
                compile_seconds=compile_seconds, loss=float(loss), peak_bytes=peak)


def run_arm(arm, shape, steps, warmup, seed):
    spec = SHAPES[shape]
    count = max(400 if shape.startswith("tiny") else 4000, (steps + warmup) * BATCH_SIZE * 2)
    sequences = make_sequences(count, spec["keras"]["vocabulary_size"], seed)
    if arm.startswith("kerasgemma"):
        return arm_kerasgemma(shape, sequences, steps, warmup, fused_loss=arm == "kerasgemma")
    if arm.startswith("kerashub_fit"):
        return arm_kerashub_fit(shape, sequences, steps, warmup, "bfloat16" if arm.endswith("bf16") else "float32")
    if arm.startswith("hf_peft"):
        return arm_hf_peft(shape, sequences, steps, warmup, compile_model=arm.endswith("compile"))
    raise ValueError(f"unknown arm {arm}")


# --- driver -----------------------------------------------------------------------------


def device_name():
    """The accelerator's name, asked in the arm's own process (the driver never touches the GPU)."""
    try:
        import jax

        return jax.devices()[0].device_kind
    except Exception:  # informative only
        return "unknown"


def card_of(rows):
    return next((row["device"] for row in rows if row.get("device")), "unknown")


def format_table(rows, card):
    header = ("model", "arm", "useful tok/s", "step ms", "peak GiB", "compile s", "loss", "vs kerasgemma")
    lines = [f"card: {card}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['arm']} | failed: {row['error'][:80]} | | | | | |")
            continue
        base = next((r for r in rows if r["model"] == row["model"] and r["arm"] == "kerasgemma" and "error" not in r), None)
        ratio = row["useful_tokens_per_second"] / base["useful_tokens_per_second"] if base else float("nan")
        peak = f"{row['peak_bytes'] / 2**30:.1f}" if row.get("peak_bytes") else "n/a"
        lines.append(
            f"| {row['model']} | {row['arm']} | {row['useful_tokens_per_second']:,.0f} | "
            f"{1000 * row['seconds'] / row['steps']:.0f} | {peak} | {row['compile_seconds']:.1f} | "
            f"{row['loss']:.3f} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gemma_2b"], choices=sorted(SHAPES),
                        help="Shapes that run every arm (default gemma_2b).")
    parser.add_argument("--extra-models", nargs="*", default=["gemma2_2b", "gemma3_1b"], choices=sorted(SHAPES),
                        help="Shapes that run the kerasgemma arm only (default gemma2_2b gemma3_1b).")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per arm (default 20).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed first steps, compilation included.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="Write the rows as JSON here.")
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes on CPU, 2 steps, in seconds.")
    parser.add_argument("--one", nargs=2, metavar=("ARM", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        arm, model = args.one
        print(json.dumps(dict(run_arm(arm, model, args.steps, args.warmup, args.seed), device=device_name())))
        return 0
    if args.smoke:
        os.environ.setdefault("KERAS_BACKEND", "jax")
        args.models, args.extra_models, args.steps, args.warmup = ["tiny"], ["tiny_gemma4"], 2, 1
        args.arms = ["kerasgemma", "kerasgemma_reference_loss", "kerashub_fit_bf16", "hf_peft_eager"]
    rows = []
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3")
    plan = [(model, arm) for model in args.models for arm in args.arms]
    plan += [(model, "kerasgemma") for model in args.extra_models if model not in args.models]
    for model, arm in plan:
        row = {"model": model, "arm": arm}
        if args.smoke:
            # In-process: on CPU peak memory is not measured, and one
            # import of JAX and torch keeps the smoke run to seconds.
            row.update(run_arm(arm, model, args.steps, args.warmup, args.seed), device=device_name())
        else:
            command = [sys.executable, __file__, "--one", arm, model, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--seed", str(args.seed)]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode == 0:
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                row["error"] = (done.stderr.strip().splitlines() or ["?"])[-1]
                print(done.stderr[-3000:], file=sys.stderr)
        if "error" not in row:
            row["useful_tokens_per_second"] = row["useful_tokens"] / row["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:  # after every arm, so a run cut short keeps what it measured
            with open(args.out, "w") as file:
                json.dump({"card": card_of(rows), "date": time.strftime("%Y-%m-%d"), "rows": rows}, file, indent=2)
    print(format_table(rows, card_of(rows)))
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
