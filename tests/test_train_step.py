"""The jitted train step: exact gradient accumulation, and bfloat16 weights with float32 LoRA."""

import jax
import numpy as np

from kerasgemma.config import TrainConfig
from kerasgemma.data import Batches, TokenizedExample
from kerasgemma.model import enable_lora, load_causal_lm
from kerasgemma.training.optimizer import make_optimizer
from kerasgemma.training.step import make_train_step, stack_micro_batches


def _examples(lengths, vocabulary_size, seed=0):
    rng = np.random.default_rng(seed)
    examples = []
    for n in lengths:
        ids = rng.integers(10, vocabulary_size, n).astype(np.int32)
        mask = (np.arange(n) >= n // 3).astype(np.int8)  # a prompt part without loss
        examples.append(TokenizedExample(ids, mask))
    return examples


def _state(lm, optimizer):
    # Fresh copies: the step donates (overwrites) the state it is given.
    return (
        [jax.numpy.array(v.value) for v in lm.trainable_variables],
        [jax.numpy.array(v.value) for v in optimizer.variables],
    )


def test_accumulating_k_micro_batches_equals_one_batch_k_times_larger():
    lm = load_causal_lm("tiny:gemma")
    enable_lora(lm, rank=2)
    vocabulary_size = lm.backbone.vocabulary_size
    # Rows of different lengths, so the micro-batches carry different token
    # counts: averaging per micro-batch would not give the same loss.
    examples = _examples([17, 9, 13, 5], vocabulary_size)
    small = list(Batches(examples, batch_size=1, sequence_length=16, mode="pad").epoch(0))
    rows = [small[i] for i in range(4)]
    one_big = {key: np.concatenate([row[key] for row in rows]) for key in rows[0]}
    assert len({float(row["loss_weights"].sum()) for row in rows}) == 4

    config = TrainConfig(learning_rate=1e-2, max_grad_norm=1.0)
    non_trainable = [v.value for v in lm.non_trainable_variables]
    results = []
    for micro_batches in (rows, [one_big]):  # 4 micro-batches of 1 row, or 1 of 4 rows
        optimizer = make_optimizer(config, 10, lm.trainable_variables)
        step = make_train_step(lm, optimizer)
        state, loss, tokens = step(_state(lm, optimizer), non_trainable, stack_micro_batches(micro_batches))
        results.append((state, float(loss), float(tokens)))

    (accumulated, loss_a, tokens_a), (big, loss_b, tokens_b) = results
    assert tokens_a == tokens_b == sum(float(row["loss_weights"].sum()) for row in rows)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for a, b in zip(accumulated[0], big[0]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    for a, b in zip(accumulated[1], big[1]):  # Adam moments and the step counter
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-9)


def test_bfloat16_base_weights_train_float32_lora():
    lm = load_causal_lm("tiny:gemma", dtype="bfloat16")
    enable_lora(lm, rank=2)
    query = lm.backbone.transformer_layers[0].attention.query_dense
    assert query.kernel.dtype == "bfloat16"  # merged view of the bf16 base
    assert query._kernel.dtype == "bfloat16"
    assert query.lora_kernel_a.dtype == query.lora_kernel_b.dtype == "float32"
    assert all(v.dtype == "float32" for v in lm.trainable_variables)

    examples = _examples([12, 12, 12, 12], lm.backbone.vocabulary_size, seed=1)
    batch = next(Batches(examples, batch_size=4, sequence_length=16, mode="pad").epoch(0))
    optimizer = make_optimizer(TrainConfig(learning_rate=3e-2, schedule="constant"), 10, lm.trainable_variables)
    step = make_train_step(lm, optimizer)
    state = _state(lm, optimizer)
    non_trainable = [v.value for v in lm.non_trainable_variables]
    losses = []
    for _ in range(6):
        state, loss, _ = step(state, non_trainable, stack_micro_batches([batch]))
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(value.dtype == np.float32 for value in state[0])
