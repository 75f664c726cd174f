"""LoRA fine-tuning throughput: kerasgemma against its strongest peers, on the same examples and weights.

Every arm trains the same randomly initialised model shape, LoRA rank 4 on the
query/value projections, AdamW, on the *same* token sequences, whose lengths
follow an HC3-like distribution (see `hc3_like_lengths`). Arms run one per
subprocess so each peak-memory figure is its own.

Arms (`ARMS`):
- kerasgemma: packed rows (`kerasgemma.data.Batches`), bf16 base weights,
  float32 LoRA beside the kernel, sliced fused loss; `kerasgemma_reference_loss`
  with the full float32 logits instead.
- notebook baselines, padded: keras-hub `fit` (bf16, float32) padded to the row
  length; transformers + PEFT padded to each batch's longest (eager, regional compile).
- peers on kerasgemma's own packed rows (bench/peers_torch.py, bench/peers_tunix.py):
  transformers + PEFT padding-free (`hf_packed`), + Liger kernels
  (`hf_packed_liger`), + regional `torch.compile` (`hf_packed_liger_compile`),
  Unsloth (`unsloth`), Tunix with qwix LoRA (`tunix`).
- a control, never counted as a peer: `hf_packed_across_examples`, hf_packed
  with transformers' default KV cache, which lets the examples of a row attend
  to each other: what a peer computing another function looks like.

Same function first: the kerasgemma arm writes its initial weights as a
transformers folder with kerasgemma's export mapping (`--shared-dir`), every
peer starts from that folder, and each packed arm's first-step loss (the
weights as loaded, LoRA B = 0) is compared with kerasgemma's: `same_function`
is true within `peers_table.SAME_FUNCTION_TOLERANCE` (read it next to the control's difference).

Tokens per step are fixed (`--tokens-per-step`, 8192): rows of
`--sequence-length` L, `8192 // L` of them (8 x 1024, 2 x 4096, 1 x 8192),
packed from the same examples (at most 1025 tokens each). The padded
baselines use the same rows count and length.

    python bench/train_throughput.py --smoke                 # tiny shapes, CPU, every arm that runs here
    python bench/train_throughput.py --models gemma_2b --arms kerasgemma hf_packed hf_packed_liger unsloth tunix \
        --steps 10 --out bench/results/peers.json
    python bench/train_throughput.py --models gemma_2b --sequence-length 4096 --remat block --arms kerasgemma hf_packed_liger
    python bench/train_throughput.py --table a.json b.json    # one table from consecutive calls' --out files
    python bench/train_throughput.py --models gemma_2b gemma2_2b gemma3_1b gemma4_e2b gemma4_e4b --extra-models \
        --steps 10 --gpus 8 --out whole.json [--resume]           # the whole table, 8 arms at a time

Columns (bench/peers_table.py): useful tokens/s, step time, peak device memory,
compile (first-steps) time, loss after the timed steps, whether the arm
computes kerasgemma's function, and speed relative to kerasgemma and to the
fastest peer of the same model in the same run (the control aside).
"""

import argparse
import concurrent.futures
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from peers_table import ARMS
from peers_table import KERASGEMMA_ARMS
from peers_table import card_of
from peers_table import combined_table
from peers_table import compare_functions
from peers_table import format_table
from peers_table import measured

HERE = os.path.dirname(os.path.abspath(__file__))
SEQUENCE_LENGTH = 1024  # the longest example is SEQUENCE_LENGTH + 1 ids, whatever the row length
TOKENS_PER_STEP = 8192
BATCH_SIZE = TOKENS_PER_STEP // SEQUENCE_LENGTH
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


def _config_shapes():
    # Real E2B/E4B shapes from the preset configs kerasgemma sizes runs with; tiny ones for CPU smoke runs.
    from kerasgemma.distribution.sizing import GEMMA4_TEXT_CONFIGS
    from kerasgemma.tiny import tiny_backbone_config

    return {
        "gemma4_e2b": _gemma4_shape(GEMMA4_TEXT_CONFIGS["gemma4_2b"]),
        "gemma4_e4b": _gemma4_shape(GEMMA4_TEXT_CONFIGS["gemma4_4b"]),
        "tiny_gemma2": dict(arch="gemma2", keras=tiny_backbone_config("gemma2", 1024)),
        "tiny_gemma3": dict(arch="gemma3", keras=tiny_backbone_config("gemma3", 1024)),
        "tiny_gemma4": _gemma4_shape(tiny_backbone_config("gemma4", 1024)),
    }


SHAPES.update(_config_shapes())
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


def packed_plan(sequences, rows, sequence_length, count):
    """The first `count` batches of kerasgemma's own packing of `sequences`: `rows` x `sequence_length` each."""
    from kerasgemma.data import Batches, TokenizedExample

    iterator = Batches([TokenizedExample(ids, mask) for ids, mask in sequences], rows, sequence_length).epoch(0)
    return [next(iterator) for _ in range(count)]


def save_shared_weights(lm, architecture, folder):
    """Write `lm`'s weights to `folder` as a transformers folder, with kerasgemma's own export mapping.

    `export_merged` reads only `.backbone` and `.preprocessor.tokenizer`; the
    tokenizer is kerasgemma's tiny one (only its special ids reach config.json;
    Unsloth wants tokenizer files in the folder). The folder appears once complete.
    """
    from types import SimpleNamespace

    from kerasgemma.export import export_merged
    from kerasgemma.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(architecture)
    export_merged(SimpleNamespace(backbone=lm.backbone, preprocessor=SimpleNamespace(tokenizer=tokenizer)), folder,
                  overwrite=True)


def kerasgemma_setup(shape, sequences, steps, warmup, dtype="bfloat16", fused_loss=True, batch_size=BATCH_SIZE,
                     lora_path="beside", lora_targets="query,value", sequence_length=SEQUENCE_LENGTH, remat="none"):
    """The model, the kerasgemma step, its state and `warmup + steps` packed batches, ready to time.

    `lora_path`: "beside" (kerasgemma's `x·W + (alpha/r)·(x·A)·B`) or Keras'
    "merged" `x·(W + (alpha/r)·A·B)`, see `kerasgemma.lora_path`; `remat`: see
    `kerasgemma.remat`."""
    import jax

    from kerasgemma.config import TrainConfig
    from kerasgemma.model import enable_lora
    from kerasgemma.training import make_optimizer, make_train_step, stack_micro_batches

    lm = _keras_model(shape, dtype)
    enable_lora(lm, LORA_RANK, targets=lora_targets, lora_path=lora_path)
    config = TrainConfig(learning_rate=5e-5, weight_decay=0.01, max_grad_norm=None, schedule="constant")
    optimizer = make_optimizer(config, steps + warmup, lm.trainable_variables)
    step = make_train_step(lm, optimizer, fused_loss=fused_loss, remat=remat)
    state = ([jax.numpy.array(v.value) for v in lm.trainable_variables], [v.value for v in optimizer.variables])
    frozen = [v.value for v in lm.non_trainable_variables]
    plan = [stack_micro_batches([b]) for b in packed_plan(sequences, batch_size, sequence_length, warmup + steps)]
    return lm, step, state, frozen, plan


def time_train_steps(step, state, frozen, plan, warmup):
    """Run `plan`'s batches through a kerasgemma train step: the first `warmup` (compile included) untimed.

    Returns a dict with useful_tokens (non-padding tokens of the timed batches), seconds, compile_seconds,
    the first step's loss (the weights as built) and the last loss.
    """
    started = time.perf_counter()
    for index, batch in enumerate(plan[:warmup]):
        state, loss, _ = step(state, frozen, batch)
        if index == 0:
            first_loss = float(loss)
    float(loss)
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for batch in plan[warmup:]:
        state, loss, _ = step(state, frozen, batch)
    loss = float(loss)
    seconds = time.perf_counter() - started
    useful = sum(int(np.count_nonzero(b["segment_ids"])) for b in plan[warmup:])
    return dict(useful_tokens=useful, seconds=seconds, compile_seconds=compile_seconds, first_loss=first_loss,
                loss=loss)


def arm_kerasgemma(shape, sequences, steps, warmup, dtype="bfloat16", fused_loss=True, batch_size=BATCH_SIZE,
                   lora_path="beside", lora_targets="query,value", sequence_length=SEQUENCE_LENGTH, remat="none",
                   shared_folder=None):
    """kerasgemma defaults: packed rows, bf16 base weights, float32 LoRA beside the frozen kernel, jitted
    donated step, sliced vocabulary projection with a fused loss gradient (`fused_loss=False`: the lever off).
    `shared_folder`: where to write the initial weights for the peers, unless already there."""
    lm, step, state, frozen, plan = kerasgemma_setup(shape, sequences, steps, warmup, dtype, fused_loss, batch_size,
                                                     lora_path, lora_targets, sequence_length, remat)
    if shared_folder and not os.path.isfile(os.path.join(shared_folder, "config.json")):
        save_shared_weights(lm, SHAPES[shape]["arch"], shared_folder)
    timed = time_train_steps(step, state, frozen, plan, warmup)
    return dict(**timed, computed_tokens=steps * batch_size * sequence_length,
                steps=steps, peak_bytes=_jax_peak_bytes(), remat=remat)


def _padded(sequences, length):
    count = len(sequences)
    token_ids = np.zeros((count, length), np.int32)
    targets = np.zeros((count, length), np.int32)
    weights = np.zeros((count, length), np.float32)
    for row, (ids, mask) in enumerate(sequences):
        n = len(ids) - 1
        token_ids[row, :n], targets[row, :n], weights[row, :n] = ids[:-1], ids[1:], mask[1:]
    return token_ids, targets, weights


def arm_kerashub_fit(shape, sequences, steps, warmup, dtype, batch_size=BATCH_SIZE, sequence_length=SEQUENCE_LENGTH):
    """The reference notebook: enable_lora(4), AdamW(5e-5, wd 0.01), fit on examples padded to the row length.

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
    count = (warmup + steps) * batch_size
    token_ids, targets, weights = _padded(sequences[:count], sequence_length)
    x = {"token_ids": token_ids, "padding_mask": token_ids != 0}
    x["padding_mask"][:, 0] = True
    fit = lambda sl: keras.Model.fit(lm, {k: v[sl] for k, v in x.items()}, targets[sl], sample_weight=weights[sl],
                                     batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    started = time.perf_counter()
    fit(slice(0, warmup * batch_size))
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    history = fit(slice(warmup * batch_size, count))
    seconds = time.perf_counter() - started
    useful = int(sum(len(ids) - 1 for ids, _ in sequences[warmup * batch_size : count]))
    return dict(useful_tokens=useful, computed_tokens=steps * batch_size * sequence_length, seconds=seconds,
                steps=steps, compile_seconds=compile_seconds, loss=float(history.history["loss"][-1]),
                peak_bytes=_jax_peak_bytes())


# What each peer arm needs beyond transformers + PEFT: a CUDA GPU (what for), and modules to import.
NEEDS_CUDA = {"hf_packed_liger": "Liger's Triton kernels", "hf_packed_liger_compile": "Liger's Triton kernels",
              "unsloth": "Unsloth"}
NEEDS_MODULES = {"hf_packed_liger": ("liger_kernel.transformers",),
                 "hf_packed_liger_compile": ("liger_kernel.transformers",),
                 "unsloth": ("unsloth",),  # first, before transformers' models: it patches them
                 "tunix": ("qwix", "tunix.models.gemma.model")}


def missing_requirement(arm):
    """Why `arm` cannot run here (no CUDA GPU, or its library fails to import), or None.

    The reason is the exact error where an import fails.

    Example:
    >>> missing_requirement("hf_packed") is None
    True
    """
    try:
        if arm in NEEDS_CUDA:
            import torch

            if not torch.cuda.is_available():
                return f"{NEEDS_CUDA[arm]}: a CUDA GPU is needed, torch {torch.__version__} here has none"
        for module in NEEDS_MODULES.get(arm, ()):
            importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 (any import failure is the reason)
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None


def shared_folder_of(shared_dir, shape, seed):
    return os.path.join(shared_dir, f"{shape}-seed{seed}")


def run_arm(arm, shape, steps, warmup, seed, sequence_length=SEQUENCE_LENGTH, tokens_per_step=TOKENS_PER_STEP,
            remat="none", shared_dir=None):
    """One arm's row: tokens, seconds, losses, peak bytes; or `{"skipped": reason}`."""
    reason = missing_requirement(arm)
    if reason:
        return {"skipped": reason}
    spec = SHAPES[shape]
    rows = tokens_per_step // sequence_length
    # The same examples whatever the row length, so longer rows pack the same sequences.
    count = max(400 if shape.startswith("tiny") else 4000, (steps + warmup) * tokens_per_step // 100)
    sequences = make_sequences(count, spec["keras"]["vocabulary_size"], seed, min(SEQUENCE_LENGTH, sequence_length))
    folder = shared_folder_of(shared_dir, shape, seed) if shared_dir else None
    if arm in KERASGEMMA_ARMS:
        return arm_kerasgemma(shape, sequences, steps, warmup, fused_loss=arm == "kerasgemma", batch_size=rows,
                              sequence_length=sequence_length, remat=remat, shared_folder=folder)
    if arm.startswith("kerashub_fit"):
        return arm_kerashub_fit(shape, sequences, steps, warmup, "bfloat16" if arm.endswith("bf16") else "float32",
                                rows, sequence_length)
    if not folder or not os.path.isfile(os.path.join(folder, "config.json")):
        raise RuntimeError(f"no shared weights in {folder}: the kerasgemma arm writes them first")
    import peers_torch

    if arm.startswith("hf_peft"):
        return peers_torch.arm_hf_padded(folder, spec["arch"], sequences, rows, steps, warmup,
                                         compile_model=arm.endswith("compile"))
    plan = packed_plan(sequences, rows, sequence_length, warmup + steps)
    if arm.startswith("hf_packed"):
        row = peers_torch.arm_hf_packed(folder, spec["arch"], plan, steps, warmup, liger="liger" in arm,
                                        compile_model=arm.endswith("compile"),
                                        across_examples=arm.endswith("across_examples"))
    elif arm == "unsloth":
        row = peers_torch.arm_unsloth(folder, spec["arch"], plan, steps, warmup, rows * sequence_length)
    elif arm == "tunix":
        import peers_tunix

        try:
            row = dict(peers_tunix.arm_tunix(folder, spec["arch"], plan, steps, warmup), peak_bytes=_jax_peak_bytes())
        except NotImplementedError as error:  # a model tunix cannot load from a transformers folder
            return {"skipped": f"NotImplementedError: {error}"}
    else:
        raise ValueError(f"unknown arm {arm}")
    useful = sum(int(np.count_nonzero(b["segment_ids"])) for b in plan[warmup:])
    return dict(row, useful_tokens=useful, computed_tokens=steps * rows * sequence_length)


# --- driver -----------------------------------------------------------------------------


def device_name():
    """The accelerator's name, asked in the arm's own process (the driver never touches the GPU)."""
    try:
        import jax

        return jax.devices()[0].device_kind
    except Exception:  # informative only
        return "unknown"


def run_child(arm, model, args, shared_dir, gpu=None):
    """One arm in its own process (its own peak memory), on `gpu` (a CUDA device id) if given; its row, or the
    error's last line."""
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    command = [sys.executable, __file__, "--one", arm, model, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--seed", str(args.seed), "--sequence-length", str(args.sequence_length),
               "--tokens-per-step", str(args.tokens_per_step), "--remat", args.remat, "--shared-dir", shared_dir]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    print(done.stderr[-3000:], file=sys.stderr)
    return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}


def gpu_ids(count):
    """The CUDA device ids of the first `count` GPUs this process may use (`CUDA_VISIBLE_DEVICES`, else 0, 1, ...).

    Example:
    >>> os.environ["CUDA_VISIBLE_DEVICES"] = "2,3,5"
    >>> gpu_ids(2)
    ['2', '3']
    >>> del os.environ["CUDA_VISIBLE_DEVICES"]
    """
    if count < 1:
        raise ValueError(f"--gpus {count}: at least 1")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(index) for index in range(count)]
    if count > len(ids):
        raise ValueError(f"--gpus {count}: CUDA_VISIBLE_DEVICES={visible} names {len(ids)}")
    return ids[:count]


def spread_over_gpus(jobs, run, gpus):
    """Run `jobs` ((index, model, arm) triples) as `run(model, arm, gpu)`, one at a time on each of `gpus`.

    A model's other arms wait until its kerasgemma arm (if among `jobs`) has
    ended: it writes the weights they load. kerasgemma arms start first.
    Yields `(index, row)` as each job ends.

    Example:
    >>> jobs = [(0, "a", "kerasgemma"), (1, "a", "tunix"), (2, "b", "kerasgemma")]
    >>> sorted(spread_over_gpus(jobs, lambda model, arm, gpu: {"gpu": gpu}, ["0", "1"]))[1][0]
    1
    """
    waiting = sorted(jobs, key=lambda job: (job[2] != "kerasgemma", job[0]))
    unwritten = {model for _, model, arm in jobs if arm == "kerasgemma"}
    free, running = list(gpus), {}
    with concurrent.futures.ThreadPoolExecutor(len(gpus)) as pool:
        while waiting or running:
            for job in [job for job in waiting if job[2] == "kerasgemma" or job[1] not in unwritten]:
                if not free:
                    break
                waiting.remove(job)
                gpu = free.pop(0)
                running[pool.submit(run, job[1], job[2], gpu)] = (job, gpu)
            ended, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in ended:
                (index, model, arm), gpu = running.pop(future)
                free.append(gpu)
                if arm == "kerasgemma":
                    unwritten.discard(model)
                yield index, future.result()


def earlier_rows(path, settings):
    """The rows of an earlier `--out` file that need no new run (measured or skipped), by (model, arm).

    Raises ValueError when that run had other settings (row length, tokens a step, remat, steps, seed).
    """
    if not path or not os.path.isfile(path):
        return {}
    with open(path) as file:
        earlier = json.load(file)
    differing = {key: earlier.get(key) for key, value in settings.items() if earlier.get(key) != value}
    if differing:
        raise ValueError(f"--resume: {path} was run with {differing}, not {settings}")
    return {(row["model"], row["arm"]): row for row in earlier["rows"] if "error" not in row}


# Arms --smoke leaves out although they could run on a CPU: their code is another arm's with one setting changed,
# and they would cost most of the smoke run's time.
SMOKE_SKIPS = {
    "kerashub_fit_fp32": "kerashub_fit_bf16's code in float32",
    "hf_peft_compile": "hf_peft_eager's code plus torch.compile, a minute of compiling on a CPU",
}


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES),
                        help="Shapes that run every arm in --arms (default gemma_2b; tiny with --smoke).")
    parser.add_argument("--extra-models", nargs="*", default=["gemma2_2b", "gemma3_1b"], choices=sorted(SHAPES),
                        help="Shapes that run the kerasgemma arm only (default gemma2_2b gemma3_1b).")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS,
                        help="Arms to run; kerasgemma always runs first (it writes the shared weights).")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per arm (default 20).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed first steps, compilation included.")
    parser.add_argument("--sequence-length", type=int, default=SEQUENCE_LENGTH,
                        help=f"Row length (default {SEQUENCE_LENGTH}); rows per step = --tokens-per-step // this.")
    parser.add_argument("--tokens-per-step", type=int, default=TOKENS_PER_STEP,
                        help=f"Token positions per step (default {TOKENS_PER_STEP}).")
    parser.add_argument("--remat", default="none", choices=("none", "block", "dots"),
                        help="kerasgemma's rematerialisation policy (kerasgemma.remat; default none).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared-dir", default=os.path.join(HERE, ".cache", "shared-weights"),
                        help="Where the kerasgemma arm writes the initial weights the peers load (kept between runs).")
    parser.add_argument("--out", help="Write the rows as JSON here (after every arm).")
    parser.add_argument("--gpus", type=int, default=1,
                        help="Run this many arms at once, each in its own process on its own GPU; a model's peers "
                             "start once its kerasgemma arm has written their weights (default 1).")
    parser.add_argument("--resume", action="store_true",
                        help="Keep the measured and skipped rows of an earlier --out file of the same settings and "
                             "run only the others, so a run cut short (a time limit) goes on where it stopped; a "
                             "model's kerasgemma arm runs again if its weights for the peers are not in --shared-dir.")
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny shapes on CPU, in-process: every arm that can run here, 1 warm-up + 1 step.")
    parser.add_argument("--table", nargs="+", metavar="JSON",
                        help="Print one table from the --out files of consecutive calls on one machine, then exit.")
    parser.add_argument("--one", nargs=2, metavar=("ARM", "MODEL"), help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.table:
        print(combined_table(args.table))
        return 0
    if args.tokens_per_step % args.sequence_length:
        print(f"--tokens-per-step {args.tokens_per_step} is not a multiple of --sequence-length "
              f"{args.sequence_length}", file=sys.stderr)
        return 2
    settings = dict(sequence_length=args.sequence_length, tokens_per_step=args.tokens_per_step, remat=args.remat)
    if args.one:
        arm, model = args.one
        row = run_arm(arm, model, args.steps, args.warmup, args.seed, shared_dir=args.shared_dir, **settings)
        print(json.dumps(dict(row, device=device_name())))
        return 0
    if args.smoke:
        os.environ.setdefault("KERAS_BACKEND", "jax")
        args.models, args.extra_models, args.steps, args.warmup = args.models or ["tiny"], [], 1, 1
        settings["tokens_per_step"] = 2 * args.sequence_length
        args.shared_dir = tempfile.mkdtemp(prefix="peers-smoke-")
    args.models = args.models or ["gemma_2b"]
    plan = [(model, arm) for model in args.models for arm in ["kerasgemma"] + [a for a in args.arms if a != "kerasgemma"]]
    plan += [(model, "kerasgemma") for model in args.extra_models if model not in args.models]
    from kerasgemma.atomic import write_json_atomic

    header = dict(settings, steps=args.steps, seed=args.seed)
    try:
        kept = earlier_rows(args.out, header) if args.resume else {}
        gpus = gpu_ids(args.gpus)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    rows = {index: kept[job] for index, job in enumerate(plan) if job in kept}
    for model in {model for index, (model, arm) in enumerate(plan) if index not in rows and arm not in KERASGEMMA_ARMS}:
        weights = os.path.join(shared_folder_of(args.shared_dir, model, args.seed), "config.json")
        if not os.path.isfile(weights):  # resumed on another machine: its peers need the weights written again
            rows.pop(plan.index((model, "kerasgemma")), None)
    jobs = [(index, model, arm) for index, (model, arm) in enumerate(plan) if index not in rows]
    if args.smoke:
        # In-process: on CPU peak memory is not measured, and one import of
        # JAX and torch keeps the smoke run to seconds.
        ended = ((index, {"skipped": f"--smoke: {SMOKE_SKIPS[arm]}"} if arm in SMOKE_SKIPS else
                  dict(run_arm(arm, model, args.steps, args.warmup, args.seed, shared_dir=args.shared_dir,
                               **settings), device=device_name()))
                 for index, model, arm in jobs)
    elif len(gpus) > 1:
        ended = spread_over_gpus(jobs, lambda model, arm, gpu: run_child(arm, model, args, args.shared_dir, gpu), gpus)
    else:
        ended = ((index, run_child(arm, model, args, args.shared_dir)) for index, model, arm in jobs)
    for count, (index, result) in enumerate(ended, 1):
        row = rows[index] = dict(dict(model=plan[index][0], arm=plan[index][1], **settings), **result)
        if measured(row):
            row["useful_tokens_per_second"] = row["useful_tokens"] / row["seconds"]
        ordered = compare_functions([rows[index] for index in sorted(rows)])
        print(json.dumps(row), flush=True)
        print(f"[{count}/{len(jobs)}] {row['model']} {row['arm']}: " + (
            f"{row['useful_tokens_per_second']:,.0f} tok/s" if measured(row) else row.get("error") or row["skipped"]),
              file=sys.stderr, flush=True)
        if args.out:  # after every arm, so a run cut short keeps what it measured (see --resume)
            write_json_atomic(args.out, {"card": card_of(ordered), "date": time.strftime("%Y-%m-%d"), **header,
                                         "rows": ordered})
    if args.smoke:
        shutil.rmtree(args.shared_dir, ignore_errors=True)
    ordered = [rows[index] for index in sorted(rows)]
    rows_per_step = settings["tokens_per_step"] // args.sequence_length
    print(format_table(ordered, card_of(ordered), f", {rows_per_step} rows x {args.sequence_length} tokens a step, "
                                                  f"kerasgemma remat {args.remat}"))
    return 0 if all("error" not in row for row in ordered) else 1



if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(HERE))
    sys.path.insert(0, HERE)
    raise SystemExit(main())
