"""The training loop: jitted steps, evaluation, checkpoints, resume, metrics.

One `Trainer` owns a model, a config, the training batches (a
`kerasgemma.data.Batches`) and a run folder. `fit()` runs from step 0 or from
a restored checkpoint; the data order of epoch e is a seeded permutation, so a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""

import math
import signal
import sys
import threading
import time

import jax
import keras
import numpy as np
from tqdm.auto import tqdm

from kerasgemma.distribution import shard_batch
from kerasgemma.errors import TrainingDiverged
from kerasgemma.errors import TrainingInterrupted
from kerasgemma.errors import UserError
from kerasgemma.training import checkpoint
from kerasgemma.training.metrics import MetricsLog
from kerasgemma.training.optimizer import computes_in_float16
from kerasgemma.training.optimizer import loss_scale_index
from kerasgemma.training.optimizer import make_optimizer
from kerasgemma.training.optimizer import make_schedule
from kerasgemma.training.step import make_eval_step
from kerasgemma.training.step import make_train_step
from kerasgemma.training.step import stack_micro_batches


def perplexity(loss):
    """`exp(loss)`, capped at exp(50) so a diverged loss still prints as a number.

    Example:
    >>> round(perplexity(1.0), 4)
    2.7183
    """
    return math.exp(min(loss, 50.0))


class _StopRequest:
    """Turn the first SIGINT/SIGTERM into a request to stop after the current step.

    The step in flight finishes and is checkpointed (an exception in the
    middle of a step would lose it); a second signal aborts at once with
    `KeyboardInterrupt`. Handlers are installed only in the main thread
    (Python allows no other) and restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr)

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Trainer:
    """LoRA training of a keras-hub causal LM on packed batches.

    Args:
        causal_lm: a keras-hub causal LM with LoRA enabled.
        config: `kerasgemma.config.TrainConfig`.
        train_batches: `kerasgemma.data.Batches` (anything with `len()` and
            `epoch(epoch, start_batch)` yielding batch dicts).
        val_batches: list of batch dicts for validation (may be empty).
        run_dir: `pathlib.Path` of the run folder (must exist).
        on_evaluate: optional `callback(trainer, step, record)` called after
            each evaluation (e.g. to log sample answers).

    Example:
    >>> import tempfile, pathlib, numpy as np
    >>> from kerasgemma.config import TrainConfig
    >>> from kerasgemma.data import Batches, TokenizedExample
    >>> from kerasgemma.model import load_causal_lm, enable_lora
    >>> lm = load_causal_lm("tiny:gemma")
    >>> _ = enable_lora(lm, rank=2)
    >>> ids = np.full(9, 9, np.int32)
    >>> batches = Batches([TokenizedExample(ids, np.ones(9, np.int8))], batch_size=1, sequence_length=8)
    >>> trainer = Trainer(lm, TrainConfig(max_steps=2, learning_rate=1e-2), batches,
    ...                   list(batches.epoch(0)), pathlib.Path(tempfile.mkdtemp()), progress=False)
    >>> summary = trainer.fit()
    >>> summary["step"], summary["val_loss"] < summary["initial_val_loss"]
    (2, True)
    """

    def __init__(self, causal_lm, config, train_batches, val_batches, run_dir, on_evaluate=None, progress=True):
        if config.grad_accum_steps > 1 and len(getattr(train_batches, "shapes", [None])) > 1:
            raise ValueError(
                "Gradient accumulation needs batches of one shape: use batching='pack' or 'pad', "
                "not 'bucket', with grad_accum_steps > 1."
            )
        if len(train_batches) < config.grad_accum_steps:
            raise ValueError(
                f"Only {len(train_batches)} training batches for grad_accum_steps="
                f"{config.grad_accum_steps}: add data or lower batch_size/grad_accum_steps."
            )
        self.causal_lm = causal_lm
        self.config = config
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.run_dir = run_dir
        self.on_evaluate = on_evaluate
        self.progress = progress
        self.steps_per_epoch = len(train_batches) // config.grad_accum_steps
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        # float16 models train with dynamic loss scaling; its scale is logged
        # as `loss_scale` with the losses (docs/facts.md#float16).
        self.optimizer = make_optimizer(
            config, self.total_steps, causal_lm.trainable_variables, loss_scaling=computes_in_float16(causal_lm)
        )
        self.loss_scale_index = loss_scale_index(self.optimizer)
        self.schedule = make_schedule(config, self.total_steps)  # for logging the rate of each step
        self.metrics = MetricsLog(run_dir)
        self._cursor, self._iterator = None, None
        self.step = 0
        # The train step donates (trainable, optimizer) buffers: start from
        # copies so the Keras variables stay valid until `sync_model`.
        self.state = (
            [jax.numpy.array(v.value) for v in causal_lm.trainable_variables],
            [jax.numpy.array(v.value) for v in self.optimizer.variables],
        )
        distributed = keras.distribution.distribution() is not None
        self.train_step = make_train_step(
            causal_lm,
            self.optimizer,
            state_shardings=jax.tree.map(lambda array: array.sharding, self.state) if distributed else None,
            remat=config.remat,
        )
        self.eval_step = make_eval_step(causal_lm)
        self.non_trainable = [v.value for v in causal_lm.non_trainable_variables]

    # -- data order -------------------------------------------------------

    def batches_for_step(self, step):
        """The micro-batches of optimizer step `step` (0-based), deterministic.

        Batches are read in order from one epoch iterator; a jump (the first
        step, a resume, a new epoch) starts the epoch's iterator at the right
        batch. A trailing batch that does not fill an accumulation is skipped.
        """
        epoch, index = divmod(step, self.steps_per_epoch)
        accum = self.config.grad_accum_steps
        if self._cursor != (epoch, index):
            self._iterator = self.train_batches.epoch(epoch, start_batch=index * accum)
        self._cursor = (epoch, index + 1)
        return [next(self._iterator) for _ in range(accum)]

    # -- state ------------------------------------------------------------

    def sync_model(self):
        """Copy the trained values back into the Keras variables."""
        for variable, value in zip(self.causal_lm.trainable_variables, self.state[0]):
            variable.assign(value)

    def _progress(self, step):
        """Where `step` starts in the data: epoch and batch index in that epoch."""
        epoch, index = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "batch": index * self.config.grad_accum_steps}

    def restore(self, path, keep_later_metrics=False):
        """Load a checkpoint into the trainer and the model.

        The data position follows from the step (`batches_for_step`); the one
        saved is checked against it, so a run whose batching settings changed
        since the checkpoint fails here instead of training on other batches.
        Metrics logged after the checkpoint's step are dropped (they are
        about to be computed again) unless `keep_later_metrics`.
        """
        saved = checkpoint.load_checkpoint(path)
        trainable, optimizer_variables = self.state
        if len(saved["trainable"]) != len(trainable) or len(saved["optimizer"]) != len(optimizer_variables):
            raise UserError(f"{path}: checkpoint does not match this model's LoRA settings.")
        step = saved["progress"]["step"]
        expected = self._progress(step)
        found = {key: saved["progress"].get(key) for key in expected}
        if found != expected:
            raise UserError(
                f"{path}: saved data position {found} but these settings put step {step} at {expected}; "
                "the batching settings changed since the checkpoint."
            )
        self.state = (
            [jax.numpy.asarray(v) for v in saved["trainable"]],
            [jax.numpy.asarray(v) for v in saved["optimizer"]],
        )
        self.step = step
        self._cursor = None
        self.sync_model()
        if not keep_later_metrics:
            self.metrics.truncate_after(self.step)

    def save(self):
        """Checkpoint the current state; refuses weights that are not finite.

        A step can return a finite loss and still leave NaN weights (the loss
        is computed before the update), so the check is on the state itself:
        the last checkpoint stays the last good one.
        """
        trainable = [np.asarray(value) for value in self.state[0]]
        if not all(np.isfinite(value).all() for value in trainable):
            raise TrainingDiverged(
                f"The LoRA weights became NaN or infinite at step {self.step}. "
                + self._last_good_checkpoint()
            )
        return checkpoint.save_checkpoint(
            self.run_dir,
            self.step,
            trainable,
            self.state[1],
            self._progress(self.step),
            keep=self.config.keep_checkpoints,
            config=self.config.to_dict(),
        )

    def _last_good_checkpoint(self):
        last = checkpoint.latest_checkpoint(self.run_dir)
        found = f"The last good checkpoint is {last}." if last else "No checkpoint was saved yet."
        return found + " Lower the learning rate or check the data."

    # -- evaluation -------------------------------------------------------

    def evaluate(self):
        """Mean validation loss over loss-carrying tokens, and perplexity."""
        if not self.val_batches:
            return {}
        loss, _ = self.mean_loss(self.val_batches)
        return {"val_loss": loss, "val_perplexity": perplexity(loss)}

    def mean_loss(self, batches):
        """`(mean loss per loss-carrying token, number of those tokens)` of the model now on `batches`.

        The validation loss of training, on any batches (`kerasgemma eval`).
        """
        total, count = 0.0, 0.0
        for batch in batches:
            batch_total, batch_count = self.eval_step(self.state[0], self.non_trainable, shard_batch(batch))
            total += float(batch_total)
            count += float(batch_count)
        return total / max(count, 1.0), int(count)

    # -- the loop ---------------------------------------------------------

    def _record_losses(self, pending, bar):
        """Fetch queued step losses from the device (one sync), log and check them.

        Steps are dispatched asynchronously, so throughput is measured over
        the whole window between two syncs, not per dispatch.
        """
        losses = [float(loss) for _, loss, _ in pending]
        now = time.perf_counter()
        tokens_per_second = sum(tokens for _, _, tokens in pending) / max(now - self._window_start, 1e-9)
        self._window_start = now
        for (step, _, tokens), loss in zip(pending, losses):
            if not math.isfinite(loss):
                raise TrainingDiverged(f"Training loss became {loss} at step {step}. " + self._last_good_checkpoint())
            record = {
                "step": step,
                "train_loss": loss,
                "learning_rate": float(self.schedule(step - 1)),
                "tokens": tokens,
                "tokens_per_second": tokens_per_second,
            }
            if self.loss_scale_index is not None and step == self.step:  # the scale after the newest step
                record["loss_scale"] = float(self.state[1][self.loss_scale_index])
            self.metrics.write(record)
        if pending:
            # Counted when finished, not when queued, so the ETA is honest;
            # tqdm adds elapsed time, ETA and steps/s to this postfix.
            bar.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{tokens_per_second:,.0f}", refresh=False)
            bar.update(len(pending))
        pending.clear()

    def fit(self, log_every=None):
        """Train to `total_steps`, evaluating and checkpointing on the way.

        Args:
            log_every: int. Steps between reading losses back from the device.
                Steps are queued asynchronously; reading a loss waits for its
                step, so syncing every step would leave the device idle while
                the host prepares the next batch. Every step's loss is still
                logged, and a sync always comes before an evaluation or a save.
                None: every step on CPU (a step takes seconds there, so the
                sync costs nothing and the progress bar moves), else 10.

        Returns a summary dict: step, initial/final validation loss, train
        loss of the last step, tokens seen, seconds.
        """
        config = self.config
        if log_every is None:
            log_every = 1 if jax.default_backend() == "cpu" else 10
        if self.step == 0:
            self.metrics.truncate_after(-1)  # a fresh start: forget any earlier attempt
        initial = self.evaluate() if self.step == 0 else {}
        if initial:
            self.metrics.write({"step": self.step, **initial})
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not self.progress)
        pending, tokens_seen, started = [], 0, time.perf_counter()
        self._window_start = started
        stop = _StopRequest()
        stop.install()
        try:
            while self.step < self.total_steps:
                micro_batches = self.batches_for_step(self.step)
                tokens = int(sum(np.count_nonzero(b["segment_ids"]) for b in micro_batches))
                self.state, loss, _ = self.train_step(
                    self.state, self.non_trainable, shard_batch(stack_micro_batches(micro_batches), batch_axis=1)
                )
                self.step += 1
                tokens_seen += tokens
                is_last = self.step == self.total_steps
                do_eval = is_last or (config.eval_every and self.step % config.eval_every == 0)
                do_save = is_last or (config.save_every and self.step % config.save_every == 0)
                pending.append((self.step, loss, tokens))
                if do_eval or do_save or self.step % log_every == 0:
                    self._record_losses(pending, bar)
                if do_eval:
                    record = {"step": self.step, **self.evaluate()}
                    if len(record) > 1:
                        self.metrics.write(record)
                    if self.on_evaluate is not None:
                        self.sync_model()
                        self.on_evaluate(self, self.step, record)
                    self._window_start = time.perf_counter()
                if do_save:
                    saved = self.save()
                    self._window_start = time.perf_counter()
                if stop.signum is not None and not is_last:
                    self._record_losses(pending, bar)
                    raise TrainingInterrupted(stop.signum, self.step, saved if do_save else self.save())
        finally:
            stop.restore()
            # Also after a divergence or an interrupt: the curve up to there
            # is what one looks at next.
            bar.close()
            self.metrics.write_csv()
            self.metrics.plot()
        self.sync_model()
        records = self.metrics.read()
        val = [r["val_loss"] for r in records if "val_loss" in r]
        train = [r["train_loss"] for r in records if "train_loss" in r]
        return {
            "step": self.step,
            "initial_val_loss": val[0] if val else None,
            "val_loss": val[-1] if val else None,
            "train_loss": train[-1] if train else None,
            "tokens": tokens_seen,
            "seconds": time.perf_counter() - started,
        }
