"""Does LoRA over float16 base weights train correctly, with and without loss scaling?

JAX on CPU computes float16 (XLA upcasts element-wise ops, matmuls round to
float16), so this measures here what a T4/V100 would do with
`dtype="float16"`. For one batch of the HC3 sample it compares the LoRA
gradients of a float16 model with a float32 model holding the same weights
(relative L2 error, share of entries that are exactly 0 in float16 but not in
float32), at loss scale 1 and at the scale the run's loss scaling settles
on; then it trains a few steps in float32, float16 without loss scaling and
float16 with it, and prints the losses.

    python bench/float16_training.py --preset tiny:gemma3 --steps 8
    python bench/float16_training.py --preset offline:gemma3_270m --steps 3 --batch-size 2 --sequence-length 64

The figures are in docs/facts.md#float16.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import keras
import numpy as np

from kerasgemma.config import TrainConfig
from kerasgemma.data.pipeline import prepare_data
from kerasgemma.demo import SAMPLE_DATA
from kerasgemma.model import enable_lora
from kerasgemma.model import load_causal_lm
from kerasgemma.training.optimizer import loss_scale_index
from kerasgemma.training.optimizer import make_optimizer
from kerasgemma.training.step import make_train_step
from kerasgemma.training.step import stack_micro_batches
from kerasgemma.training.step import summed_loss


def build(preset, dtype, config, texts, weights_from=None):
    """The LoRA model in `dtype`; with `weights_from`, holding that model's weights rounded to `dtype`."""
    keras.utils.set_random_seed(0)
    lm = load_causal_lm(preset, dtype=dtype, sequence_length=config.sequence_length, texts=texts)
    enable_lora(lm, config.lora_rank, config.lora_alpha, config.lora_targets)
    if weights_from is not None:
        for source, target in zip(weights_from.weights, lm.weights):
            target.assign(np.asarray(source.numpy()).astype(target.dtype))
        return lm
    # Non-zero LoRA B so every LoRA matrix gets a gradient.
    rng = np.random.default_rng(0)
    for variable in lm.trainable_variables:
        variable.assign(rng.normal(0, 0.02, variable.shape).astype("float32"))
    return lm


def gradients(lm, batch, scale):
    trainable = [v.value for v in lm.trainable_variables]
    non_trainable = [v.value for v in lm.non_trainable_variables]

    @jax.jit
    def grad(trainable):
        def loss(values):
            total, count = summed_loss(lm, values, non_trainable, batch)
            return total * scale / count

        return jax.value_and_grad(loss)(trainable)

    loss, grads = grad(trainable)
    return float(loss) / scale, [np.asarray(g, np.float64) / scale for g in grads]


def compare(reference, grads):
    flat_reference = np.concatenate([g.ravel() for g in reference])
    flat = np.concatenate([g.ravel() for g in grads])
    finite = bool(np.isfinite(flat).all())
    error = float(np.linalg.norm(flat - flat_reference) / np.linalg.norm(flat_reference)) if finite else None
    underflow = float(np.mean((flat == 0) & (flat_reference != 0)))
    return {"finite": finite, "relative_l2_error": error, "zero_share": underflow,
            "reference_abs_median": float(np.median(np.abs(flat_reference)))}


def train(lm, batches, steps, config, loss_scaling):
    optimizer = make_optimizer(config, steps, lm.trainable_variables, loss_scaling=loss_scaling)
    step = make_train_step(lm, optimizer)
    state = ([jnp.array(v.value) for v in lm.trainable_variables], [jnp.array(v.value) for v in optimizer.variables])
    non_trainable = [v.value for v in lm.non_trainable_variables]
    losses, scales = [], []
    for index in range(steps):
        state, loss, _ = step(state, non_trainable, stack_micro_batches([batches[index % len(batches)]]))
        losses.append(round(float(loss), 5))
        if loss_scaling:
            scales.append(float(state[1][loss_scale_index(optimizer)]))
    return {"losses": losses, "loss_scale": scales}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny:gemma3")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    config = TrainConfig(preset=args.preset, data=str(SAMPLE_DATA), batch_size=args.batch_size,
                         sequence_length=args.sequence_length, learning_rate=args.learning_rate,
                         warmup_steps=0, schedule="constant")
    from kerasgemma.data.pipeline import load_data

    examples = load_data(config)
    texts = examples.texts()
    reference_lm = build(args.preset, "float32", config, texts)
    models = {"float32": reference_lm, "float16": build(args.preset, "float16", config, texts, reference_lm)}
    prepared = prepare_data(config, models["float32"].preprocessor.tokenizer, examples=examples)
    batches = list(prepared.train.epoch(0))
    result = {"preset": args.preset, "batch": [args.batch_size, args.sequence_length]}
    loss32, reference = gradients(models["float32"], batches[0], 1.0)
    result["float32_loss"] = loss32
    for scale in (1.0, 2.0**10, 2.0**15):
        loss16, grads = gradients(models["float16"], batches[0], scale)
        result[f"float16_scale_{scale:g}"] = dict(compare(reference, grads), loss=loss16)
    if not args.skip_training:
        result["train_float32"] = train(build(args.preset, "float32", config, texts, reference_lm), batches,
                                        args.steps, config, False)
        for name, loss_scaling in (("no_scaling", False), ("loss_scaling", True)):
            lm = build(args.preset, "float16", config, texts, reference_lm)
            result[f"train_float16_{name}"] = train(lm, batches, args.steps, config, loss_scaling)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
