"""Peak memory and useful tok/s of LoRA training with a quantized base and rematerialisation (issue 17).

One row = model shape x base precision x remat (none / block / dots) x sequence length, named
`MODEL:PRECISION:REMAT:LENGTH`, e.g. `gemma_2b:bf16:block:4096`. Random weights built from the shape's config
(bench/train_throughput.py's `SHAPES`), LoRA rank 4 on query/value, AdamW, the same packed HC3-like rows for every
row of a length. Each row runs in a fresh subprocess, so its peaks are its own; a row that runs out of memory is
recorded as "OOM", one that cannot run here (no GPU, a library missing) as "skipped" with the reason, and the
next row runs.

PRECISION bf16 / int8 / int4 is kerasgemma: the model is built and quantized on the host CPU and its weights then
placed on the device, as `kerasgemma train` does with a quantized base (`kerasgemma.distribution.on_host`,
`place_on_devices`); beside each measured peak is `kerasgemma.distribution.memory`'s estimate for the same setting.
PRECISION hf-bnb4 is the QLoRA peer: transformers + PEFT on a bitsandbytes 4-bit base (NF4 with double
quantization, bfloat16 compute; every `nn.Linear` of the decoder, not the embeddings or the head, as transformers
quantizes; the other weights stay bfloat16, where PEFT's `prepare_model_for_kbit_training` would make them
float32), float32 LoRA on q_proj/v_proj, AdamW, gradient checkpointing (non-reentrant) when REMAT is not "none",
sdpa attention, fed the same packed rows padding-free like TRL's `padding_free`: position_ids restart at every
example and no attention mask, from which transformers builds the per-example causal mask (`use_cache=False`:
with a cache it does not, and packed examples attend to each other). Its peak is
`torch.cuda.max_memory_allocated` over the training steps; it needs a CUDA GPU and `pip install bitsandbytes`.

Every row also records `row_seconds` (the subprocess's wall time: imports, building and quantizing the weights,
compiling, the steps) and `host_peak_bytes` (its peak RSS: the host RAM loading and quantizing took).

    python bench/memory.py --smoke                                  # tiny shapes on CPU, seconds
    python bench/memory.py --out bench/results/memory_h200.json     # DEFAULT_ROWS, one H200 call
    python bench/memory.py --rows gemma_2b:int4:block:1024 gemma4_e4b:int4:block:4096 gemma_2b:int4:none:4096
    python bench/memory.py --rows all --row-timeout 300 --out bench/results/memory_all.json

Time per row on one H200, measured 2026-11-30 (bench/results/2026-11-30-h200-memory*.json, `row_seconds`): a
Gemma 2B row 42-65 s (compile 14-27 s), a Gemma 4 E4B row 104-188 s (building and quantizing on the host ~50 s,
49.5 GiB of host RAM; compile 55-92 s), a transformers row 20-30 s. `--row-timeout 300` bounds a row; `--out` is
rewritten after every row, so a call cut short keeps the rows it finished. On a machine of several GPUs, row lists
run side by side, one per GPU (`CUDA_VISIBLE_DEVICES=0 python bench/memory.py --rows ... &
CUDA_VISIBLE_DEVICES=1 python bench/memory.py --rows ...`): that is how the 2026-11-30 rows were measured.
`--rows all` runs `ALL_ROWS`, every kerasgemma row (24, about 40 minutes of one GPU); the default list
(`DEFAULT_ROWS`) is three of them beside the three transformers rows.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from train_throughput import SHAPES
from train_throughput import _jax_peak_bytes
from train_throughput import _keras_model
from train_throughput import device_name
from train_throughput import make_sequences
from train_throughput import time_train_steps

HF_BNB4 = "hf-bnb4"
PRECISIONS = {"bf16": None, "int8": "int8", "int4": "int4", HF_BNB4: None}
REMATS = ("none", "block", "dots")
LORA_RANK = 4
# The targets, measured on one H200 so far (bench/results/2026-11-29-h200-memory*.json): Gemma 2B at 4096
# tokens with remat (9.8 GiB, < 16), Gemma 4 E4B with int8 + remat (10.5 GiB, < 14). Still to measure: int4 (E4B
# first), Gemma 2B's quantized rows at 4096, and the transformers + bitsandbytes 4-bit peer beside them.
DEFAULT_ROWS = (
    "gemma4_e4b:int4:block:1024", "gemma_2b:int4:block:4096", "gemma_2b:int8:none:4096",
    "gemma_2b:hf-bnb4:none:1024", "gemma_2b:hf-bnb4:block:4096", "gemma4_e4b:hf-bnb4:block:1024",
)
# Every kerasgemma row issue 17 asks for: both shapes, each base, with and without remat, at 1024 and 4096 tokens.
ALL_ROWS = tuple(f"{model}:{precision}:{remat}:{length}" for model in ("gemma_2b", "gemma4_e4b")
                 for precision in ("bf16", "int8", "int4") for remat in ("none", "block") for length in (1024, 4096))
SMOKE_ROWS = ("tiny:bf16:none:128", "tiny:int8:block:128", "tiny_gemma4:int4:dots:128", "tiny:hf-bnb4:none:128")
OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


class RowSkipped(Exception):
    """A row that cannot run on this machine (no CUDA GPU, a library missing); recorded with the reason."""


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


def parse_row(name):
    """`(model, precision, remat, length)` of a row name.

    >>> parse_row("gemma_2b:int8:block:4096")
    ('gemma_2b', 'int8', 'block', 4096)
    """
    model, precision, remat, length = name.split(":")
    if model not in SHAPES or precision not in PRECISIONS or remat not in REMATS:
        raise argparse.ArgumentTypeError(
            f"{name}: expected MODEL:PRECISION:REMAT:LENGTH with MODEL in {sorted(SHAPES)}, "
            f"PRECISION in {sorted(PRECISIONS)}, REMAT in {REMATS}")
    return model, precision, remat, int(length)


def estimate_bytes(model, precision, remat, length, batch_size, devices=None):
    """The memory plan's per-device total for this row, on `devices` (default: the device at hand)."""
    from kerasgemma.distribution import detect_devices
    from kerasgemma.distribution.memory import memory_plan

    spec = SHAPES[model]
    architecture = "gemma" if spec["arch"] == "gemma2" else spec["arch"]
    plan = memory_plan(model, devices or detect_devices(), "bfloat16", PRECISIONS[precision], remat, batch_size,
                       length, LORA_RANK, backbone=(architecture, dict(spec["keras"])))
    return plan.total_bytes


def packed_batches(model, length, batch_size, count, seed=0):
    """`count` packed batches of HC3-like rows for `model`'s vocabulary (kerasgemma's `Batches`, one shape)."""
    from kerasgemma.data import Batches, TokenizedExample

    vocabulary = SHAPES[model]["keras"]["vocabulary_size"]
    sequences = make_sequences(max(64, 3 * count * batch_size * length // 180), vocabulary, seed, max_length=length)
    iterator = Batches([TokenizedExample(ids, mask) for ids, mask in sequences], batch_size, length).epoch(0)
    return [next(iterator) for _ in range(count)]


def run_row(name, batch_size, steps, warmup):
    """Train `warmup + steps` steps of one row; its tokens, seconds, loss, peak device and host memory."""
    model, precision, remat, length = parse_row(name)
    batches = packed_batches(model, length, batch_size, warmup + steps)
    if precision == HF_BNB4:
        row = hf_bnb4_row(model, remat, batches, warmup)
    else:
        row = kerasgemma_row(model, precision, remat, batches, warmup)
        row["estimate_bytes"] = estimate_bytes(model, precision, remat, length, batch_size)
    return dict(row, steps=steps, host_peak_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def kerasgemma_row(model, precision, remat, batches, warmup):
    """kerasgemma: built and quantized on the host, placed on the device, LoRA and AdamW there (`build_model`'s way)."""
    from kerasgemma.config import TrainConfig
    from kerasgemma.distribution import on_host, place_on_devices
    from kerasgemma.model import enable_lora
    from kerasgemma.quantization import quantize_base
    from kerasgemma.training import make_optimizer, make_train_step, stack_micro_batches

    with on_host(log=lambda _: None):
        lm = _keras_model(model, "bfloat16")
        quantize_base(lm, PRECISIONS[precision])
    place_on_devices(lm)
    enable_lora(lm, LORA_RANK, targets="query,value")
    optimizer = make_optimizer(TrainConfig(learning_rate=5e-5, schedule="constant", max_grad_norm=None),
                               len(batches), lm.trainable_variables)
    state = ([v.value for v in lm.trainable_variables], [v.value for v in optimizer.variables])
    frozen = [v.value for v in lm.non_trainable_variables]
    step = make_train_step(lm, optimizer, remat=remat)
    plan = [stack_micro_batches([batch]) for batch in batches]
    return dict(**time_train_steps(step, state, frozen, plan, warmup), peak_bytes=_jax_peak_bytes())


def hf_bnb4_row(model, remat, batches, warmup):
    """transformers + PEFT on a bitsandbytes NF4 base, the same packed batches padding-free (module docstring)."""
    import torch

    if not torch.cuda.is_available():
        raise RowSkipped("transformers + bitsandbytes 4-bit needs a CUDA GPU")
    try:
        import bitsandbytes
    except ImportError as error:
        raise RowSkipped(f"bitsandbytes is not installed ({error})") from error
    import peft
    import transformers

    if SHAPES[model]["arch"] == "gemma4" and not hasattr(transformers, "Gemma4ForCausalLM"):
        raise RowSkipped(f"transformers {transformers.__version__} has no Gemma 4")
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # random bf16 weights made on the GPU, as a bf16 checkpoint loads
    try:
        with torch.device("cuda"):
            hf = _hf_model(model)
    finally:
        torch.set_default_dtype(default_dtype)
    _to_bnb4(hf.model, bitsandbytes)
    hf.is_loaded_in_4bit = True  # set by transformers' 4-bit loading; PEFT reads it to wrap Linear4bit layers
    if remat != "none":
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hf = peft.get_peft_model(hf, peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, lora_dropout=0.0,
                                                 target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.01)
    inputs = [{key: torch.from_numpy(value).cuda() for key, value in hf_packed(batch).items()} for batch in batches]

    def train_step(batch):
        loss = hf(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for batch in inputs[:warmup]:
        loss = train_step(batch)
    torch.cuda.synchronize()
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for batch in inputs[warmup:]:
        loss = train_step(batch)
    loss = float(loss)
    seconds = time.perf_counter() - started
    useful = sum(int(np.count_nonzero(batch["segment_ids"])) for batch in batches[warmup:])
    return dict(useful_tokens=useful, seconds=seconds, compile_seconds=compile_seconds, loss=loss,
                peak_bytes=_torch_peak_bytes())


def _to_bnb4(module, bitsandbytes, device="cuda"):
    """Replace every `torch.nn.Linear` under `module` by a bitsandbytes NF4 `Linear4bit` of the same weights."""
    import torch

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            quantized = bitsandbytes.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                                   compute_dtype=torch.bfloat16, compress_statistics=True,
                                                   quant_type="nf4", device="meta")
            # Params4bit quantizes when it is moved to the GPU (what transformers' loader does).
            quantized.weight = bitsandbytes.nn.Params4bit(child.weight.data, requires_grad=False,
                                                          compress_statistics=True, quant_type="nf4").to(device)
            if child.bias is not None:
                quantized.bias = child.bias
            setattr(parent, name, quantized)


def hf_packed(batch):
    """A packed kerasgemma batch as transformers inputs, padding-free.

    position_ids restart at 0 at every example (transformers derives the
    per-example causal mask from them); transformers shifts `labels` by one
    (logits at t predict labels[t + 1]), so labels[t + 1] is kerasgemma's
    target at t where its loss weight is set: the same targets, except each
    row's last position.

    >>> batch = {"token_ids": np.array([[2, 5, 6, 2, 7, 0]]), "target_ids": np.array([[5, 6, 1, 7, 1, 0]]),
    ...          "loss_weights": np.array([[0, 1, 1, 0, 1, 0]]), "segment_ids": np.array([[1, 1, 1, 2, 2, 0]])}
    >>> {key: value.tolist() for key, value in hf_packed(batch).items()}
    {'input_ids': [[2, 5, 6, 2, 7, 0]], 'position_ids': [[0, 1, 2, 0, 1, 0]], 'labels': [[-100, -100, 6, 1, -100, 1]]}
    """
    segments = np.asarray(batch["segment_ids"])
    index = np.arange(segments.shape[1])
    starts = np.maximum.accumulate(np.where(np.diff(segments, axis=1, prepend=-1) != 0, index, 0), axis=1)
    labels = np.full(segments.shape, -100, np.int64)
    labels[:, 1:] = np.where(np.asarray(batch["loss_weights"])[:, :-1] > 0, batch["target_ids"][:, :-1], -100)
    return {"input_ids": np.asarray(batch["token_ids"], np.int64), "position_ids": index - starts, "labels": labels}


def format_table(rows, card, batch_size):
    header = ("model", "base", "remat", "tokens", "peak GiB", "plan GiB", "useful tok/s", "step ms", "compile s",
              "loss", "host GiB", "row s")
    lines = [f"card: {card}, batch {batch_size} row(s), LoRA rank {LORA_RANK} on query/value",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        model, precision, remat, length = parse_row(row["row"])
        head = f"| {model} | {precision} | {remat} | {length} |"
        if "error" in row or "skipped" in row:
            lines.append(f"{head} {row.get('error') or 'skipped: ' + row['skipped']} |" + " |" * 7)
            continue
        peak = f"{row['peak_bytes'] / 2**30:.2f}" if row.get("peak_bytes") else "n/a"
        plan = f"{row['estimate_bytes'] / 2**30:.2f}" if row.get("estimate_bytes") else "n/a"
        lines.append(f"{head} {peak} | {plan} | {row['useful_tokens'] / row['seconds']:,.0f} | "
                     f"{1000 * row['seconds'] / row['steps']:.0f} | {row['compile_seconds']:.1f} | {row['loss']:.3f} | "
                     f"{row['host_peak_bytes'] / 2**30:.1f} | {row.get('row_seconds', 0):.0f} |")
    return "\n".join(lines)


def one_row(name, batch_size, steps, warmup):
    """`run_row`'s result with the card's name; a skipped row (and an OOM) as a record, not an exception."""
    torch_row = parse_row(name)[1] == HF_BNB4
    try:
        row = run_row(name, batch_size, steps, warmup)
    except RowSkipped as reason:
        return {"skipped": str(reason)}
    except Exception as error:  # noqa: BLE001 (recorded, the driver goes on)
        if any(marker in str(error) for marker in OUT_OF_MEMORY):
            return {"error": "OOM", "peak_bytes": _torch_peak_bytes() if torch_row else _jax_peak_bytes()}
        raise
    return dict(row, device=_torch_device_name() if torch_row else device_name())


def _torch_peak_bytes():
    import torch

    return torch.cuda.max_memory_allocated()


def _torch_device_name():
    import torch

    return torch.cuda.get_device_name(0)


def _child_error(done):
    text = done.stderr + done.stdout
    if any(marker in text for marker in OUT_OF_MEMORY):
        return "OOM"
    return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS),
                        help="MODEL:PRECISION:REMAT:LENGTH ..., or `all` for ALL_ROWS (default: DEFAULT_ROWS).")
    parser.add_argument("--batch-size", type=int, default=1, help="Rows per step (default 1).")
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per row (default 4).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed first steps, compilation included.")
    parser.add_argument("--row-timeout", type=int, default=300, help="Seconds before a row is given up.")
    parser.add_argument("--out", help="Write the rows as JSON here (after every row).")
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes on CPU, in-process, seconds.")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from kerasgemma.atomic import write_json_atomic

    if args.rows == ["all"]:
        args.rows = list(ALL_ROWS)
    for name in args.rows:
        parse_row(name)
    if args.one:
        print(json.dumps(one_row(args.one, args.batch_size, args.steps, args.warmup)))
        return 0
    if args.smoke:
        args.rows, args.steps = list(SMOKE_ROWS), 2
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3")
    rows = []
    for name in args.rows:
        row = {"row": name}
        started = time.perf_counter()
        if args.smoke:
            os.environ.setdefault("KERAS_BACKEND", "jax")
            row.update(one_row(name, args.batch_size, args.steps, args.warmup))
        else:
            command = [sys.executable, __file__, "--one", name, "--batch-size", str(args.batch_size),
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.row_timeout)
            except subprocess.TimeoutExpired:
                row["error"] = f"timeout after {args.row_timeout} s"
            else:
                lines = done.stdout.strip().splitlines()
                if done.returncode == 0 and lines:
                    row.update(json.loads(lines[-1]))
                else:
                    row["error"] = _child_error(done)
                    print(done.stderr[-2000:], file=sys.stderr)
        row["row_seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            card = next((r["device"] for r in rows if r.get("device")), "unknown")
            write_json_atomic(args.out, {"card": card, "date": time.strftime("%Y-%m-%d"), "batch_size": args.batch_size,
                                         "rows": rows})
    card = next((r["device"] for r in rows if r.get("device")), "unknown")
    print(format_table(rows, card, args.batch_size))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
