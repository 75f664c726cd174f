"""AdamW with warmup + decay, clipping, and no weight decay on norms/biases/embeddings.

A model computing in float16 trains through Keras' `LossScaleOptimizer`
around the AdamW (see `make_optimizer` and docs/facts.md#float16).
"""

import keras

NO_DECAY_NAMES = ["bias", "scale", "embeddings", "gamma", "beta"]
# Dynamic loss scaling for float16. The step differentiates the loss summed
# over a micro-batch's tokens (not their mean), which already scales each
# token's gradient by the token count; Keras' default 2**15 on top of that
# overflowed on the first step of a tiny Gemma (a skipped step), 2**14 did
# not (docs/facts.md#float16). An overflow costs one skipped step and halves
# the scale; it doubles after this many good steps.
INITIAL_LOSS_SCALE = 2.0**10
LOSS_SCALE_GROWTH_STEPS = 2000


class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `learning_rate`, then cosine, linear or no decay.

    Example:
    >>> schedule = WarmupDecay(1.0, warmup_steps=2, total_steps=6, decay="linear")
    >>> [round(float(schedule(step)), 3) for step in range(7)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    """

    def __init__(self, learning_rate, warmup_steps, total_steps, decay="cosine", final_fraction=0.0):
        if decay not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {decay!r}")
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, 1)
        self.decay = decay
        self.final_fraction = final_fraction

    def __call__(self, step):
        ops = keras.ops
        # `step` is the optimizer's 0-based update count. Warmup gives update
        # s the rate (s + 1) / warmup_steps, so the first update is never 0;
        # decay then runs from the peak at update `warmup_steps` down towards
        # 0 at `total_steps`, so every one of the run's updates moves.
        step = ops.cast(step, "float32")
        warmup = (step + 1.0) / max(self.warmup_steps, 1)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.decay == "cosine":
            factor = 0.5 * (1.0 + ops.cos(3.141592653589793 * progress))
        elif self.decay == "linear":
            factor = 1.0 - progress
        else:
            factor = ops.ones_like(progress)
        factor = self.final_fraction + (1.0 - self.final_fraction) * factor
        factor = ops.where(step < self.warmup_steps, warmup, factor)
        return self.learning_rate * factor

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay": self.decay,
            "final_fraction": self.final_fraction,
        }


def make_schedule(config, total_steps):
    """The `WarmupDecay` of `config` over a run of `total_steps` updates."""
    return WarmupDecay(config.learning_rate, config.warmup_steps, total_steps, config.schedule)


def computes_in_float16(causal_lm):
    """Whether `causal_lm` computes in float16 (and so needs loss scaling).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> computes_in_float16(build_tiny_causal_lm("gemma", dtype="float16"))
    True
    """
    return causal_lm.backbone.dtype_policy.compute_dtype == "float16"


def make_optimizer(config, total_steps, trainable_variables, loss_scaling=False):
    """Build AdamW for `config` and create its variables.

    Weight decay is off for biases, norm scales and embeddings (they are
    frozen under LoRA, but a user may unfreeze them). Keras matches
    `NO_DECAY_NAMES` as substrings of `variable.name`, which for keras-hub
    Gemma is the bare weight name: "embeddings", "scale" (RMS norms),
    "kernel", "lora_kernel_a"/"lora_kernel_b" (decayed, as in PEFT).

    `loss_scaling` wraps it in `keras.optimizers.LossScaleOptimizer`: the
    train step multiplies the loss by the current scale, and the optimizer
    unscales the gradients, skips the update and halves the scale when one
    of them is not finite, and doubles the scale after
    `LOSS_SCALE_GROWTH_STEPS` good steps. Its scale and counter are two more
    optimizer variables, so a checkpoint saves them and a resume restores
    them exactly.

    Example:
    >>> from kerasgemma.config import TrainConfig
    >>> v = keras.Variable([1.0], name="scale")
    >>> optimizer = make_optimizer(TrainConfig(), 10, [v])
    >>> optimizer._use_weight_decay(v)
    False
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=make_schedule(config, total_steps),
        weight_decay=config.weight_decay,
        global_clipnorm=config.max_grad_norm,
    )
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(
            optimizer, initial_scale=INITIAL_LOSS_SCALE, dynamic_growth_steps=LOSS_SCALE_GROWTH_STEPS
        )
    optimizer.build(trainable_variables)
    return optimizer


def loss_scale_index(optimizer):
    """Position of the loss scale in `optimizer.variables`, or None without loss scaling.

    Example:
    >>> from kerasgemma.config import TrainConfig
    >>> optimizer = make_optimizer(TrainConfig(), 10, [keras.Variable([1.0])], loss_scaling=True)
    >>> optimizer.variables[loss_scale_index(optimizer)].name
    'dynamic_scale'
    """
    scale = getattr(optimizer, "dynamic_scale", None)
    if scale is None:
        return None
    return next(i for i, variable in enumerate(optimizer.variables) if variable is scale)
