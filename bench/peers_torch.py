"""The PyTorch peers of bench/train_throughput.py: transformers + PEFT, Liger kernels, Unsloth.

Every arm fine-tunes the model the kerasgemma arm trains: its random initial
weights, written as a transformers folder by kerasgemma's own export mapping
(`kerasgemma.export.hf_tensors`), loaded with `from_pretrained`. LoRA rank 4,
alpha 4, on `q_proj`/`v_proj` (B starts at zero, as in Keras, so the first
step's loss is the base model's), AdamW(5e-5, weight decay 0.01), bf16.

Two ways to batch the same examples:

- padded (`hf_peft_eager`, `hf_peft_compile`): each batch of examples padded to
  its longest, TRL's default without packing (`padded_batch`);
- packed (`hf_packed*`, `unsloth`): kerasgemma's own packed rows fed
  padding-free (`packed_batch`): `input_ids` [rows, length], `position_ids`
  restarting at 0 for each example, no attention mask. transformers >= 5 then
  builds a block-diagonal causal mask from the position ids
  (`masking_utils.find_packed_sequence_indices`), but only without a KV cache,
  hence `use_cache=False`: with the config's default cache it silently lets
  examples attend to each other (tests/test_bench_throughput.py checks both).

Attention: `sdpa`, except Gemma 2, where transformers 5.17's sdpa path drops
the attention soft-cap without a word (5.23 refuses it: "`sdpa` attention does
not support `softcap`"), so Gemma 2 arms run `eager`, the path that computes it.

    python bench/train_throughput.py --arms kerasgemma hf_packed hf_packed_liger --models gemma_2b
"""

import os
import time

import numpy as np

LORA_RANK = 4
IGNORE = -100


def attention_for(architecture):
    """transformers' attention implementation that computes Gemma `architecture` exactly.

    >>> attention_for("gemma2"), attention_for("gemma3")
    ('eager', 'sdpa')
    """
    return "eager" if architecture == "gemma2" else "sdpa"


def positions_in_examples(segment_ids):
    """Each token's position within its example (NumPy `kerasgemma.attention.segment_positions`, no JAX here).

    >>> positions_in_examples(np.array([[1, 1, 1, 2, 2, 0, 0]])).tolist()
    [[0, 1, 2, 0, 1, 0, 1]]
    """
    segment_ids = np.asarray(segment_ids)
    index = np.broadcast_to(np.arange(segment_ids.shape[1]), segment_ids.shape)
    starts = np.concatenate([np.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    return index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)


def packed_batch(batch, one_row=False):
    """A kerasgemma packed batch as transformers' padding-free inputs, NumPy int64.

    kerasgemma shifts each example on its own (`token_ids[i]` predicts
    `target_ids[i]` where `loss_weights[i]` is 1), so the pre-shifted labels
    are `shift_labels`, which transformers and Liger take as they are: every
    arm then scores exactly kerasgemma's tokens. `labels` holds the same
    targets one place to the right, for code that shifts them itself
    (Unsloth): it drops only a row's very last target. `one_row`: the rows
    laid end to end as one (TRL's padding-free layout, batch 1).

    Example:
    >>> import numpy as np
    >>> batch = {"token_ids": np.array([[2, 5, 6, 2, 7, 0]]), "target_ids": np.array([[5, 6, 1, 7, 1, 0]]),
    ...          "loss_weights": np.array([[0, 1, 1, 0, 1, 0]]), "segment_ids": np.array([[1, 1, 1, 2, 2, 0]])}
    >>> inputs = packed_batch(batch)
    >>> inputs["position_ids"].tolist(), inputs["shift_labels"].tolist()
    ([[0, 1, 2, 0, 1, 0]], [[-100, 6, 1, -100, 1, -100]])
    >>> inputs["labels"].tolist()
    [[-100, -100, 6, 1, -100, 1]]
    """
    positions = positions_in_examples(batch["segment_ids"])
    shift_labels = np.where(np.asarray(batch["loss_weights"]) > 0, batch["target_ids"], IGNORE).astype(np.int64)
    token_ids = np.asarray(batch["token_ids"], np.int64)
    if one_row:
        token_ids, positions, shift_labels = (a.reshape(1, -1) for a in (token_ids, positions, shift_labels))
    labels = np.concatenate([np.full_like(shift_labels[:, :1], IGNORE), shift_labels[:, :-1]], 1)
    return dict(input_ids=token_ids, position_ids=positions.astype(np.int64),
                labels=labels, shift_labels=shift_labels)


def padded_batch(sequences):
    """`(input_ids, labels, attention_mask)` of examples padded to the longest, NumPy int64.

    Example:
    >>> import numpy as np
    >>> ids, labels, mask = padded_batch([(np.array([2, 5, 6]), np.array([0, 1, 1])), (np.array([2, 7]), np.array([0, 1]))])
    >>> ids.tolist(), labels.tolist(), mask.tolist()
    ([[2, 5, 6], [2, 7, 0]], [[-100, 5, 6], [-100, 7, -100]], [[1, 1, 1], [1, 1, 0]])
    """
    length = max(len(ids) for ids, _ in sequences)
    ids = np.zeros((len(sequences), length), np.int64)
    labels = np.full((len(sequences), length), IGNORE, np.int64)
    attention = np.zeros((len(sequences), length), np.int64)
    for row, (tokens, mask) in enumerate(sequences):
        ids[row, : len(tokens)] = tokens
        labels[row, : len(tokens)] = np.where(np.asarray(mask) == 1, tokens, IGNORE)
        attention[row, : len(tokens)] = 1
    return ids, labels, attention


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(folder, architecture, attention=None):
    """The folder's causal LM in bf16 on the device, LoRA r4 on q/v through PEFT."""
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, attn_implementation=attention or attention_for(architecture))
    model = model.to(_device())
    return peft.get_peft_model(model, peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, lora_dropout=0.0,
                                                      target_modules=["q_proj", "v_proj"]))


def compile_layers(model, dynamic):
    """Regional compilation (PyTorch's advice for transformers): each decoder layer through `torch.compile`.

    All layers share one graph, so compiling costs one layer's time, not the model's.
    """
    for layer in model.get_base_model().model.layers:
        layer.compile(dynamic=dynamic)


def time_torch_steps(model, batches, warmup, forward):
    """Train on `batches` (AdamW), the first `warmup` untimed; `forward(model, batch) -> loss`.

    Returns seconds, compile_seconds, the first step's loss (the weights as
    loaded), the last loss and the peak CUDA memory of the timed steps.
    """
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.01)
    cuda = _device() == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step(batch):
        loss = forward(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    started = time.perf_counter()
    first_loss = float(step(batches[0]))
    for batch in batches[1:warmup]:
        step(batch)
    sync()
    compile_seconds = time.perf_counter() - started
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for batch in batches[warmup:]:
        loss = step(batch)
    sync()
    seconds = time.perf_counter() - started
    return dict(seconds=seconds, compile_seconds=compile_seconds, first_loss=first_loss, loss=float(loss),
                peak_bytes=torch.cuda.max_memory_allocated() if cuda else None)


def _on_device(arrays):
    import torch

    return {key: torch.from_numpy(np.ascontiguousarray(value)).to(_device()) for key, value in arrays.items()}


def arm_hf_padded(folder, architecture, sequences, batch_size, steps, warmup, compile_model):
    """transformers + PEFT, sdpa (eager for Gemma 2), batches of `batch_size` examples padded to their longest;
    `compile_model`: each decoder layer through `torch.compile(dynamic=True)` (lengths vary per batch)."""
    model = load_model(folder, architecture)
    if compile_model:
        compile_layers(model, dynamic=True)
    chunks = [sequences[i * batch_size : (i + 1) * batch_size] for i in range(warmup + steps)]
    batches = []
    for chunk in chunks:
        ids, labels, attention = padded_batch(chunk)
        batches.append(_on_device(dict(input_ids=ids, labels=labels, attention_mask=attention)))
    timed = time_torch_steps(model, batches, warmup, lambda m, b: m(**b, use_cache=False).loss)
    useful = int(sum(len(ids) - 1 for chunk in chunks[warmup:] for ids, _ in chunk))
    return dict(**timed, useful_tokens=useful, computed_tokens=None, steps=steps,
                attention=attention_for(architecture))


def liger_patch(architecture):
    """Liger's patch for `architecture`: fused linear cross-entropy, RMSNorm, GeGLU, RoPE (Triton, CUDA only).

    Raises ImportError (with the reason) where Liger or Triton cannot load, e.g. on a CPU-only torch.
    """
    from liger_kernel.transformers import monkey_patch

    name = {"gemma3": "gemma3_text", "gemma4": "gemma4_text"}.get(architecture, architecture)
    return getattr(monkey_patch, f"apply_liger_kernel_to_{name}")


def arm_hf_packed(folder, architecture, plan, steps, warmup, liger=False, compile_model=False, across_examples=False):
    """transformers + PEFT on kerasgemma's packed rows, padding-free (see the module docstring);
    `liger`: Liger's kernels patched in before loading; `compile_model`: regional `torch.compile`;
    `across_examples`: the control, transformers' default KV cache left on, so examples attend to each other."""
    if liger:
        liger_patch(architecture)()
    model = load_model(folder, architecture)
    if compile_model:
        compile_layers(model, dynamic=False)
    batches = [_on_device(packed_batch(batch)) for batch in plan]
    cache = {} if across_examples else {"use_cache": False}
    timed = time_torch_steps(model, batches, warmup, lambda m, b: m(**b, **cache).loss)
    return dict(**timed, steps=steps, attention=attention_for(architecture))


def arm_unsloth(folder, architecture, plan, steps, warmup, sequence_length):
    """Unsloth on the same packed rows: `FastLanguageModel` (its fused kernels and gradient checkpointing
    "unsloth", the defaults of its notebooks), LoRA r4 on q/v. The rows go end to end as one row of
    `sequence_length` (all rows' tokens) with restarting position ids and no mask, TRL's padding-free layout,
    from which Unsloth infers the examples' boundaries (it does so only for batch 1: `LlamaModel_fast_forward`),
    with labels it shifts itself. Needs a CUDA GPU; offline: `HF_HUB_OFFLINE=1`, `UNSLOTH_DISABLE_STATISTICS=1`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import torch
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(folder, max_seq_length=sequence_length, dtype=torch.bfloat16,
                                                 load_in_4bit=False, load_in_8bit=False)
    model = FastLanguageModel.get_peft_model(model, r=LORA_RANK, lora_alpha=LORA_RANK, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"], bias="none", random_state=0)
    batches = [_on_device({k: v for k, v in packed_batch(batch, one_row=True).items() if k != "shift_labels"})
               for batch in plan]
    timed = time_torch_steps(model, batches, warmup, lambda m, b: m(**b, use_cache=False).loss)
    return dict(**timed, steps=steps, attention="unsloth")
