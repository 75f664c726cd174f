"""Loss and perplexity of a trained run on any data file, counted as in training.

`kerasgemma eval RUN_DIR FILE` is this module. The file goes through the
data stage with the run's own settings (template, sequence length,
batching, overflow) and tokenizer, every example is scored (nothing held
out), and the loss is the training loop's validation loss
(`Trainer.mean_loss`): the mean cross-entropy over completion tokens only
(the model's turns), whatever `loss` the run trained with.
"""

import dataclasses

from kerasgemma.data.pipeline import prepare_data
from kerasgemma.training.loop import perplexity

# Which rows are read and how: the data stage's settings a user may change for another file.
READ_SETTINGS = ("format", "columns", "split", "subset", "answers", "include_chatgpt", "on_error")


def evaluate_data(run, data, progress=False, **read_settings):
    """Score `run`'s model (at its loaded checkpoint) on every example of `data`.

    Args:
        run: a `kerasgemma.run.Run` (from `load_run`).
        data: str. Anything `TrainConfig.data` takes: a .jsonl/.json/.csv/
            .parquet file, a folder, `hub:…`, `hf://…`.
        progress: bool. A progress bar while reading rows.
        **read_settings: `READ_SETTINGS` overrides (format, columns, …);
            the others come from the run's config.

    Returns:
        A JSON-ready dict: data, step, examples, tokens (completion tokens
        scored), loss, perplexity, skipped, truncated, dropped.

    Example:
    >>> import tempfile
    >>> from kerasgemma.config import TrainConfig
    >>> from kerasgemma.demo import SAMPLE_DATA
    >>> from kerasgemma.run import train
    >>> config = TrainConfig(preset="tiny:gemma3", data=str(SAMPLE_DATA), max_steps=1,
    ...                      sequence_length=64, output_dir=tempfile.mkdtemp())
    >>> run = train(config, progress=False)  # doctest: +ELLIPSIS
    Precision: float32 base weights, ...
    Devices: ...
    >>> result = evaluate_data(run, SAMPLE_DATA)
    >>> result["examples"], result["loss"] > 0
    (320, True)
    """
    unknown = sorted(set(read_settings) - set(READ_SETTINGS))
    if unknown:
        raise TypeError(f"evaluate_data() got unexpected settings {unknown}; it takes {READ_SETTINGS}.")
    config = dataclasses.replace(run.config, data=str(data), validation_fraction=0.0, loss="completion",
                                 **read_settings)
    config.validate()
    prepared = prepare_data(config, run.causal_lm.preprocessor.tokenizer, progress=progress)
    loss, tokens = run.trainer.mean_loss(prepared.train.epoch(0))
    summary = prepared.summary()
    return {
        "data": str(data),
        "step": run.trainer.step,
        "examples": summary["train_examples"],
        "tokens": tokens,
        "loss": loss,
        "perplexity": perplexity(loss),
        "skipped": summary["skipped_total"],
        "truncated": summary["truncated"],
        "dropped": summary["dropped"],
    }
