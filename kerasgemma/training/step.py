"""Pure, jitted train and eval steps over a keras-hub causal LM.

The train step takes the model state as plain arrays and returns the new
state, so it can be jitted with donated buffers and no host sync. Gradient
accumulation is exact: the loss of k micro-batches is the summed loss over
every loss-carrying token divided by their total count, the same number one
batch k times larger gives.

With a `LossScaleOptimizer` (float16 models) the loss is multiplied by the
scale held in the optimizer state before differentiation, so float16
gradients inside the model do not underflow; the optimizer unscales them
(docs/facts.md#float16).
"""

import jax
import jax.numpy as jnp
import numpy as np

from kerasgemma.forward import cross_entropy
from kerasgemma.forward import logits_fn
from kerasgemma.forward import per_token_loss
from kerasgemma.training.optimizer import loss_scale_index


def summed_loss(causal_lm, trainable, non_trainable, batch, fused_loss=True, remat="none"):
    """Sum of per-token losses weighted by `loss_weights`, and the weight sum.

    `fused_loss` projects onto the vocabulary in slices with the gradient
    formed in the same pass (`kerasgemma.forward.fused_cross_entropy`);
    False is the reference computation over full float32 logits. `remat`
    rematerialises each block in the fused path (`kerasgemma.remat`).
    """
    if fused_loss:
        losses = per_token_loss(causal_lm, trainable, non_trainable, batch, remat)
    else:
        logits = logits_fn(causal_lm, trainable, non_trainable, batch)
        losses = cross_entropy(logits, batch["target_ids"])
    weights = batch["loss_weights"].astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(weights)


def stack_micro_batches(batches):
    """Stack k batch dicts into one with a leading micro-batch axis.

    Example:
    >>> import numpy as np
    >>> b = {"token_ids": np.zeros((2, 4), np.int32)}
    >>> stack_micro_batches([b, b])["token_ids"].shape
    (2, 2, 4)
    """
    return {key: np.stack([batch[key] for batch in batches]) for key in batches[0]}


def make_train_step(causal_lm, optimizer, fused_loss=True, state_shardings=None, remat="none"):
    """A jitted `step(state, non_trainable, micro_batches) -> (state, loss, tokens)`.

    `state` is `(trainable, optimizer_variables)`, lists of arrays, and is
    donated (updated in place on the device); `non_trainable` (the frozen
    base weights) is only read, so it stays shared with the Keras model;
    `micro_batches` is a batch dict whose arrays have a leading micro-batch
    axis (see `stack_micro_batches`). `fused_loss`: see `summed_loss`.
    `state_shardings` pins the new state to the layout of the old one: under
    model parallel XLA may otherwise lay out the optimizer moments anew after
    the first step, which costs a second compilation. The loss returned is
    never scaled.
    """
    scale_index = loss_scale_index(optimizer)

    def grad_fn(trainable, non_trainable, batch, loss_scale):
        def loss(values):
            total, count = summed_loss(causal_lm, values, non_trainable, batch, fused_loss, remat)
            return total * loss_scale, (total, count)

        (_, (total, count)), grads = jax.value_and_grad(loss, has_aux=True)(trainable)
        return total, count, grads

    def step(state, non_trainable, micro_batches):
        trainable, optimizer_variables = state
        loss_scale = 1.0 if scale_index is None else optimizer_variables[scale_index]

        def accumulate(carry, batch):
            total, count, grads = carry
            batch_total, batch_count, batch_grads = grad_fn(trainable, non_trainable, batch, loss_scale)
            grads = jax.tree.map(jnp.add, grads, batch_grads)
            return (total + batch_total, count + batch_count, grads), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        (total, count, grads), _ = jax.lax.scan(
            accumulate, (jnp.float32(0), jnp.float32(0), zeros), micro_batches
        )
        scale = 1.0 / jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda grad: grad * scale, grads)
        with jax.named_scope("optimizer"):
            trainable, optimizer_variables = optimizer.stateless_apply(optimizer_variables, grads, trainable)
        return (trainable, optimizer_variables), total * scale, count

    out_shardings = None if state_shardings is None else (state_shardings, None, None)
    return jax.jit(step, donate_argnums=0, out_shardings=out_shardings)


def make_eval_step(causal_lm, fused_loss=True):
    """A jitted `eval_step(trainable, non_trainable, batch) -> (sum, count)`."""

    def eval_step(trainable, non_trainable, batch):
        return summed_loss(causal_lm, trainable, non_trainable, batch, fused_loss)

    return jax.jit(eval_step)
