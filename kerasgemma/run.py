"""One training run, start to finish: data → model + LoRA → Trainer → run folder.

Every step is a plain function so a notebook can call them one by one; `train`
and `resume` chain them for the CLI. A run folder holds the resolved
`config.json`, `data_report.json`, `metrics.jsonl`/`.csv`, `loss.png`,
`samples.jsonl`, `checkpoints/`, and the final `adapter.lora.h5` +
`lora.json`.
"""

import dataclasses
import datetime
import json
import os
import shutil
from pathlib import Path

from kerasgemma.backend import ensure_jax_backend

ensure_jax_backend()

import keras  # noqa: E402

from kerasgemma import data  # noqa: E402
from kerasgemma.config import CONFIG_FILE_NAME  # noqa: E402
from kerasgemma.config import TrainConfig  # noqa: E402
from kerasgemma.errors import MissingFileError  # noqa: E402
from kerasgemma.errors import UserError  # noqa: E402
from kerasgemma.files import CHECKPOINTS_DIR  # noqa: E402
from kerasgemma.model import TINY_PREFIX  # noqa: E402
from kerasgemma.model import enable_lora  # noqa: E402
from kerasgemma.model import load_causal_lm  # noqa: E402
from kerasgemma.model import resolve_lora_targets  # noqa: E402
from kerasgemma.run_lock import run_lock  # noqa: E402
from kerasgemma.train import checkpoint  # noqa: E402
from kerasgemma.train.loop import Trainer  # noqa: E402
from kerasgemma.train.metrics import truncate_jsonl  # noqa: E402

LORA_WEIGHTS_NAME = "adapter.lora.h5"
LORA_SETTINGS_NAME = "lora.json"
DATA_REPORT_NAME = "data_report.json"
SAMPLES_NAME = "samples.jsonl"
MIN_FREE_BYTES = 100 * 2**20
HUB_PREFIX = "hf://"


@dataclasses.dataclass
class Run:
    """What `train`/`resume` return: the folder, the trained model, the numbers."""

    run_dir: Path
    causal_lm: object
    summary: dict
    validation_examples: list


def create_run_dir(output_dir):
    """Make a new, timestamped run folder under `output_dir` and check it is writable.

    Fails early, before any model is loaded, if the folder cannot be written
    or the disk has less than 100 MiB free.
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        run_dir = root / stamp
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = root / f"{stamp}-{suffix}"
        run_dir.mkdir()
    except OSError as error:
        raise UserError(f"Cannot create a run folder under {root}: {error.strerror}") from error
    check_writable(run_dir)
    return run_dir


def check_writable(folder):
    """Raise a clear error if `folder` is not writable or the disk is nearly full."""
    folder = Path(folder)
    probe = folder / ".write-test"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"Output folder {folder} is not writable: {error.strerror}") from error
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"Only {free / 2**20:.0f} MiB free on the disk of {folder}; need at least 100 MiB.")


def load_data(config, progress=True):
    """Examples of the configured source, split into (train, validation), and the load report."""
    options = dict(
        subset=config.subset,
        answers=config.answers,
        include_chatgpt=config.include_chatgpt,
        on_error=config.on_error,
        progress=progress,
    )
    if config.data == "hub":
        examples, report = data.load_hub_examples(**options)
    elif config.data.startswith(HUB_PREFIX):  # as in `prepare_data` and `kerasgemma data`
        examples, report = data.load_hub_examples(config.data[len(HUB_PREFIX) :], **options)
    else:
        examples, report = data.load_examples(config.data, **options)
    train, validation = data.split_examples(examples, config.validation_fraction, config.seed)
    if not train:
        raise UserError(f"No training examples left in {config.data} after validation and skips.")
    return train, validation, report


def make_batches(config, tokenizer, examples, shuffle_seed):
    """Tokenize examples and batch them as configured; returns (Batches, TokenReport)."""
    tokenized, report = data.tokenize_examples(
        examples,
        tokenizer,
        max_tokens=config.sequence_length + 1,
        template=config.template,
        loss=config.loss,
        overflow=config.overflow,
    )
    if not tokenized:
        raise UserError("No example fits the sequence length; raise sequence_length or use overflow='truncate'.")
    batches = data.Batches(tokenized, config.batch_size, config.sequence_length, mode=config.batching, seed=shuffle_seed)
    return batches, report


def build_model(config, texts=()):
    """Choose the distribution, load the preset and switch on LoRA, seeded so runs repeat exactly.

    The distribution is installed before the weights are created, so they are
    created sharded; the choice and its reason are printed.
    """
    from kerasgemma import distribution

    strategy, architecture = distribution.plan(config.preset, config.dtype, config.batch_size, config.distribution, config.mesh)
    _, backbone_config = distribution.preset_backbone_config(config.preset)
    distribution.configure(strategy, architecture, backbone_config.get("num_key_value_heads"))
    keras.utils.set_random_seed(config.seed)
    causal_lm = load_causal_lm(
        config.preset,
        dtype=config.dtype,
        sequence_length=config.sequence_length,
        texts=texts if config.preset.startswith(TINY_PREFIX) else (),
    )
    enable_lora(causal_lm, config.lora_rank, config.lora_alpha, config.lora_targets)
    for path, shape, _ in distribution.report_unsharded(causal_lm):
        print(f"warning: {path} {tuple(shape)} is not sharded under {strategy.kind} parallel")
    return causal_lm


def write_json(path, values):
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(values, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(path)


def save_lora(causal_lm, config, run_dir):
    """Save the LoRA matrices (keras-hub's `.lora.h5`) and the settings needed to reload them."""
    path = Path(run_dir) / LORA_WEIGHTS_NAME
    temporary = path.with_name("tmp-" + path.name)
    causal_lm.backbone.save_lora_weights(str(temporary))
    os.replace(temporary, path)
    write_json(
        Path(run_dir) / LORA_SETTINGS_NAME,
        {
            "preset": config.preset,
            "rank": config.lora_rank,
            "alpha": config.lora_alpha if config.lora_alpha is not None else config.lora_rank,
            "targets": resolve_lora_targets(config.lora_targets),
        },
    )
    return path


def sample_answers(causal_lm, config, questions):
    """Greedy answers to `questions`, formatted with the training template."""
    from kerasgemma.generate import chat

    conversations = [[{"role": "user", "content": question}] for question in questions]
    return chat(causal_lm, conversations, max_new_tokens=config.max_new_tokens, template=config.template)


def _sample_logger(config, run_dir):
    """An `on_evaluate` callback appending answers to `sample_prompts` to `samples.jsonl`."""

    def on_evaluate(trainer, step, record):
        if not config.sample_prompts:
            return
        answers = sample_answers(trainer.causal_lm, config, config.sample_prompts)
        with open(Path(run_dir) / SAMPLES_NAME, "a", encoding="utf-8") as file:
            for question, answer in zip(config.sample_prompts, answers):
                file.write(json.dumps({"step": step, "question": question, "answer": answer}, ensure_ascii=False) + "\n")

    return on_evaluate


def prepare_run(config, run_dir, progress=True):
    """Load data and model and build the Trainer for `config` in `run_dir`."""
    train_examples, validation_examples, load_report = load_data(config, progress=progress)
    texts = [m["content"] for example in train_examples for m in example["messages"]]
    causal_lm = build_model(config, texts)
    tokenizer = causal_lm.preprocessor.tokenizer
    train_batches, train_tokens = make_batches(config, tokenizer, train_examples, config.seed)
    val_batches, val_tokens = make_batches(config, tokenizer, validation_examples, config.seed) if validation_examples else (None, None)
    write_json(
        Path(run_dir) / DATA_REPORT_NAME,
        {
            "load": load_report.to_dict(),
            "train_tokens": train_tokens.to_dict(),
            "validation_tokens": val_tokens.to_dict() if val_tokens else None,
            "train_examples": len(train_examples),
            "validation_examples": len(validation_examples),
            "train_batches": len(train_batches),
            "non_padding_fraction": train_batches.non_padding_fraction,
        },
    )
    trainer = Trainer(
        causal_lm,
        config,
        train_batches,
        list(val_batches.epoch(0)) if val_batches else [],
        Path(run_dir),
        on_evaluate=_sample_logger(config, run_dir),
        progress=progress,
    )
    return trainer, validation_examples


def train(config, run_dir=None, progress=True):
    """Start a run: returns a `Run` with the folder, the trained model and a summary.

    The settings and the output folder are checked before anything is
    created or loaded, so a typo costs a second, not a model download, and
    leaves no run folder behind. The folder is locked while training.
    """
    config.validate()
    run_dir_given = bool(run_dir)
    if run_dir_given:
        run_dir = Path(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create {run_dir}: {error.strerror}") from error
        check_writable(run_dir)
    else:
        run_dir = create_run_dir(config.output_dir)
    with run_lock(run_dir, "train"):
        config.save(run_dir / CONFIG_FILE_NAME)
        try:
            trainer, validation_examples = prepare_run(config, run_dir, progress=progress)
        except UserError:
            if not run_dir_given:  # a folder made here holds nothing of value yet
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        summary = trainer.fit()
        save_lora(trainer.causal_lm, config, run_dir)
    return Run(run_dir, trainer.causal_lm, summary, validation_examples)


def check_resumable(config, latest, log=print):
    """Refuse a `config.json` edited since checkpoint `latest` in a way that changes the run.

    Changes `resume` can honour (`kerasgemma.config.RESUMABLE_CHANGES`,
    such as `max_steps`) are logged and kept.
    """
    saved = checkpoint.load_config(latest)
    if saved is None:
        return
    refused, allowed = config.changes_from(saved)
    if refused:
        raise UserError(
            f"{Path(latest).parent.parent / CONFIG_FILE_NAME} was edited since {latest.name} in ways a resume cannot honour: "
            f"{', '.join(refused)}; undo them, or start a new run with `kerasgemma train`."
        )
    if allowed:
        log(f"resuming with changed settings: {', '.join(allowed)}")


def resume(run_dir, progress=True):
    """Continue a run from its newest complete checkpoint (or from the start).

    The config is the one saved in the run folder, so the data, model and
    batches are rebuilt exactly; the steps after the checkpoint are run again
    and their metrics and sample answers from the killed run are replaced.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE_NAME
    if not config_path.is_file():
        raise MissingFileError(f"{run_dir} is not a run folder: {CONFIG_FILE_NAME} is missing.")
    check_writable(run_dir)
    with run_lock(run_dir, "resume"):
        config = TrainConfig.from_file(config_path).validate(str(config_path))
        latest = checkpoint.latest_good_checkpoint(run_dir)
        if latest is not None:
            check_resumable(config, latest)
        elif checkpoint.list_checkpoints(run_dir):
            print(f"warning: no usable checkpoint in {run_dir / CHECKPOINTS_DIR}; starting again from step 0")
        trainer, validation_examples = prepare_run(config, run_dir, progress=progress)
        if latest is not None:
            trainer.restore(latest)
            print(f"resuming from {latest.name}")
        truncate_jsonl(run_dir / SAMPLES_NAME, trainer.step)
        summary = trainer.fit()
        save_lora(trainer.causal_lm, config, run_dir)
    return Run(run_dir, trainer.causal_lm, summary, validation_examples)
