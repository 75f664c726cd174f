"""One training run, start to finish: data → model + LoRA → Trainer → run folder.

`start_run(config)` creates the run folder, loads the data and the model and
returns a `Run` ready to `fit()`; `train(config)` is `start_run` + `fit` +
`save_lora`, and `resume(run_dir)` picks a killed run up where its newest
checkpoint left it. A notebook can stop between any two of these steps. The
files of a run folder are listed in `kerasgemma.files`.
"""

import contextlib
import dataclasses
import datetime
import json
import shutil
from pathlib import Path

import keras

from kerasgemma import distribution
from kerasgemma import files
from kerasgemma.atomic import replacing
from kerasgemma.atomic import write_json_atomic
from kerasgemma.config import TrainConfig
from kerasgemma.data.loading import PYTHON_PREFIX
from kerasgemma.data.loading import pick_split
from kerasgemma.data.pipeline import load_data
from kerasgemma.data.pipeline import prepare_data
from kerasgemma.errors import MissingFileError
from kerasgemma.errors import UserError
from kerasgemma.export.base_model import hf_base_model
from kerasgemma.export.gguf_export import export_gguf
from kerasgemma.export.pipeline import export_and_verify
from kerasgemma.generation import chat
from kerasgemma.hub import write_model_card
from kerasgemma.model import TINY_PREFIX
from kerasgemma.model import enable_lora
from kerasgemma.model import load_causal_lm
from kerasgemma.model import lora_settings
from kerasgemma.precision import AUTO
from kerasgemma.precision import auto_dtype
from kerasgemma.quantization import quantize_base
from kerasgemma.run_lock import run_lock
from kerasgemma.training import checkpoint
from kerasgemma.training.loop import Trainer
from kerasgemma.training.metrics import MetricsLog
from kerasgemma.training.metrics import training_summary
from kerasgemma.training.metrics import truncate_jsonl

MIN_FREE_BYTES = 100 * 2**20


def create_run_dir(output_dir):
    """Make a new, timestamped run folder under `output_dir` and check it is writable.

    Fails early, before any model is loaded, if the folder cannot be written
    or the disk has less than 100 MiB free.

    Example:
    >>> import tempfile
    >>> create_run_dir(tempfile.mkdtemp()).name[:2]
    '20'
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
        raise UserError(f"cannot create a run folder under {root}: {error.strerror}") from error
    check_writable(run_dir)
    return run_dir


def check_writable(folder):
    """Raise a `UserError` if `folder` is not writable or the disk is nearly full."""
    folder = Path(folder)
    probe = folder / ".write-test"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"output folder {folder} is not writable: {error.strerror}") from error
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"Only {free / 2**20:.0f} MiB free on the disk of {folder}; need at least 100 MiB.")


def resolve_precision(config, log=print):
    """`config` with `dtype="auto"` replaced by the dtype chosen for this device; logs the choice and why.

    The run folder's config.json then holds the dtype the run trains in, so
    a resume (on this machine or another) trains in the same one, with the
    same optimizer state (float16 adds the loss scale to it).

    Example:
    >>> from kerasgemma.config import TrainConfig
    >>> resolve_precision(TrainConfig(dtype="auto")).dtype
    Precision: float32 base weights, float32 LoRA (dtype auto: CPU: bfloat16 matmuls are slow there).
    'float32'
    """
    if config.dtype == AUTO:
        dtype, reason = auto_dtype()
        reason = f"dtype auto: {reason}"
    else:
        dtype, reason = config.dtype, "given"
    scaling = " with dynamic loss scaling" if dtype == "float16" else ""
    log(f"Precision: {dtype} base weights, float32 LoRA{scaling} ({reason}).")
    return dataclasses.replace(config, dtype=dtype)


def _memory_settings(config):
    """The memory plan's settings of `config` (`kerasgemma.distribution.plan`)."""
    return dict(quantize=config.quantize, remat=config.remat, sequence_length=config.sequence_length,
                lora_rank=config.lora_rank, lora_targets=config.lora_targets)


def build_model(config, texts=()):
    """Choose the distribution, load the preset, quantize it if asked and switch on LoRA.

    Seeded so runs repeat exactly. The distribution is installed before the
    weights are created, so they are created sharded; the choice and its
    reason are printed. `config.quantize` quantizes the loaded float base
    (deterministic, so a resume rebuilds the same quantized base) before
    LoRA is added. The plan loads that float base on the host CPU when the
    host RAM allows (`Strategy.loads_on_host`): only the quantized weights
    then reach the devices, placed as the distribution lays them out, and
    LoRA (and later the optimizer state) is created on the devices directly.
    """
    strategy, architecture = distribution.plan(
        config.preset, config.dtype, config.batch_size, config.distribution, config.mesh,
        memory=_memory_settings(config),
    )
    _, backbone_config = distribution.preset_backbone_config(config.preset)
    distribution.configure(strategy, architecture, backbone_config.get("num_key_value_heads"))
    keras.utils.set_random_seed(config.seed)
    with distribution.on_host() if strategy.loads_on_host else contextlib.nullcontext():
        causal_lm = load_causal_lm(
            config.preset,
            dtype=config.dtype,
            sequence_length=config.sequence_length,
            texts=texts if config.preset.startswith(TINY_PREFIX) else (),
        )
        quantize_base(causal_lm, config.quantize)
    if strategy.loads_on_host:
        distribution.place_on_devices(causal_lm)
    enable_lora(causal_lm, config.lora_rank, config.lora_alpha, config.lora_targets)
    for path, shape, _ in distribution.report_unsharded(causal_lm):
        print(f"warning: {path} {tuple(shape)} is not sharded under {strategy.kind} parallel")
    return causal_lm


def save_lora(causal_lm, config, run_dir):
    """Save the LoRA matrices (keras-hub's `.lora.h5`) and the settings needed to reload them."""
    path = Path(run_dir) / files.LORA_WEIGHTS
    with replacing(path) as scratch:
        causal_lm.backbone.save_lora_weights(str(scratch))
    settings = lora_settings(config.lora_rank, config.lora_alpha, config.lora_targets)
    write_json_atomic(Path(run_dir) / files.LORA_SETTINGS, {"preset": config.preset, **settings})
    return path


def sample_answers(causal_lm, config, questions):
    """Greedy answers to `questions`, formatted with the training template."""
    conversations = [[{"role": "user", "content": question}] for question in questions]
    return chat(causal_lm, conversations, max_new_tokens=config.max_new_tokens, template=config.template)


def _sample_logger(config, run_dir):
    """An `on_evaluate` callback appending answers to `sample_prompts` to `samples.jsonl`."""

    def on_evaluate(trainer, step, record):
        if not config.sample_prompts:
            return
        answers = sample_answers(trainer.causal_lm, config, config.sample_prompts)
        with open(Path(run_dir) / files.SAMPLES, "a", encoding="utf-8") as file:
            for question, answer in zip(config.sample_prompts, answers):
                file.write(json.dumps({"step": step, "question": question, "answer": answer}, ensure_ascii=False) + "\n")

    return on_evaluate


@dataclasses.dataclass
class Run:
    """A training run: its folder, config, data and `Trainer` (which holds the model).

    Made by `start_run`, `train` and `resume`; each step of a run is a method,
    so a notebook cell can call one at a time.

    Example:
    >>> import tempfile
    >>> from kerasgemma.config import TrainConfig
    >>> from kerasgemma.demo import SAMPLE_DATA
    >>> config = TrainConfig(preset="tiny:gemma3", data=str(SAMPLE_DATA), max_steps=1,
    ...                      sequence_length=64, output_dir=tempfile.mkdtemp())
    >>> run = start_run(config, progress=False)
    Precision: float32 base weights, ...
    Devices: ...
    >>> run.fit()["step"], run.save_lora().name
    (1, 'adapter.lora.h5')
    """

    run_dir: Path
    config: TrainConfig
    trainer: Trainer
    data: object
    summary: dict | None = None

    @property
    def causal_lm(self):
        """The keras-hub causal LM being trained (LoRA enabled)."""
        return self.trainer.causal_lm

    @property
    def validation_examples(self):
        """The held-out examples (chat dicts), for sample answers."""
        return self.data.examples.validation

    def fit(self):
        """Train to the configured number of steps; returns the summary dict."""
        self.summary = self.trainer.fit()
        return self.summary

    def answer(self, questions):
        """Greedy answers of the model as it is now to `questions` (a list of str)."""
        return sample_answers(self.causal_lm, self.config, questions)

    def sample_log(self):
        """The answers to `config.sample_prompts` at each evaluation: dicts of step, question and answer.

        Read from the run folder's `samples.jsonl` (empty before the first
        evaluation, or without sample prompts).
        """
        path = self.run_dir / files.SAMPLES
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as file:
            return [json.loads(line) for line in file if line.strip()]

    def save_lora(self):
        """Write `adapter.lora.h5` + `lora.json` into the run folder; returns the `.lora.h5` path."""
        return save_lora(self.causal_lm, self.config, self.run_dir)

    def plot(self):
        """Draw the loss curve to `loss.png` in the run folder; returns its path."""
        return MetricsLog(self.run_dir).plot()

    def export(self, output_dir=None, adapter_only=False, base_model=None, repo_id=None, **export_args):
        """Export the model, verify it and write its model card; returns `(folder, report)`.

        Args:
            output_dir: str or path. Default: `hf-merged/` (or `hf-adapter/`)
                in the run folder.
            adapter_only: bool. A PEFT adapter instead of merged weights.
            base_model: str or None. The base model the card and the adapter
                name, e.g. "google/gemma-2b" (default: the preset's Hugging
                Face repo, `kerasgemma.export.base_model.hf_base_model`).
            repo_id: str or None. The Hub repo the card's usage snippet names.
            **export_args: passed to `export_and_verify` (dtype,
                max_shard_size, verify, max_new_tokens, atol, check_mlx,
                progress, log).
        """
        default_dir = files.ADAPTER_DIR if adapter_only else files.MERGED_DIR
        base_model = base_model or hf_base_model(self.config.preset)
        folder, report = export_and_verify(
            self.causal_lm,
            str(output_dir or self.run_dir / default_dir),
            adapter_only=adapter_only,
            base_model=base_model,
            **export_args,
        )
        write_model_card(
            folder,
            base_model,
            lora=lora_settings(self.config.lora_rank, self.config.lora_alpha, self.config.lora_targets),
            run_config=self.config.to_dict(),
            training=training_summary(self.run_dir),
            repo_id=repo_id,
        )
        return folder, report

    def export_gguf(self, output_dir=None, gguf_type="f16", **export_args):
        """Write the model (LoRA merged) as a verified GGUF + Ollama Modelfile; returns `(path, report)`.

        Args:
            output_dir: str or path. Default: `gguf/` in the run folder.
            gguf_type: str. "f16" (default), "bf16", "q8_0" or "f32".
            **export_args: passed to `kerasgemma.export_gguf` (name, verify,
                max_new_tokens, atol, progress, log).
        """
        return export_gguf(self.causal_lm, str(output_dir or self.run_dir / files.GGUF_DIR),
                           gguf_type=gguf_type, **export_args)


def plan_distribution(config, verbose=True):
    """Preview the device strategy `start_run` will install for `config` (printed with its reason).

    Example:
    >>> from kerasgemma.config import TrainConfig
    >>> plan_distribution(TrainConfig(preset="tiny:gemma", distribution="none"), verbose=False).kind
    'none'
    """
    strategy, _ = distribution.plan(
        config.preset, config.dtype, config.batch_size, config.distribution, config.mesh, verbose=verbose,
        memory=_memory_settings(config),
    )
    return strategy


def _build_run(config, run_dir, progress, examples=None):
    """Load data (unless given) and model and build the `Run` for `config` in `run_dir`."""
    examples = examples or load_data(config, progress=progress)
    causal_lm = build_model(config, examples.texts())
    prepared = prepare_data(config, causal_lm.preprocessor.tokenizer, examples=examples)
    write_json_atomic(Path(run_dir) / files.DATA_REPORT, prepared.summary())
    trainer = Trainer(
        causal_lm,
        config,
        prepared.train,
        list(prepared.validation.epoch(0)) if prepared.validation else [],
        Path(run_dir),
        on_evaluate=_sample_logger(config, run_dir),
        progress=progress,
    )
    return Run(Path(run_dir), config, trainer, prepared)


def _new_run_folder(config, run_dir):
    """`(run folder, whether it was created here)`: a given folder, or a new timestamped one."""
    if not run_dir:
        return create_run_dir(config.output_dir), True
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {run_dir}: {error.strerror}") from error
    check_writable(run_dir)
    return run_dir, False


def _start_in(config, run_dir, created, progress, examples=None):
    """Save the config in `run_dir` and build its `Run`; a folder made here is removed on a user error."""
    config.save(run_dir / files.RUN_CONFIG)
    try:
        return _build_run(config, run_dir, progress, examples)
    except UserError:
        if created:  # a folder made here holds nothing of value yet
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def start_run(config, run_dir=None, progress=True, examples=None, data=None):
    """Create the run folder, save the config, load data and model; returns a `Run` to `fit()`.

    The settings and the output folder are checked before anything is
    created or loaded, so a typo costs a second, not a model download, and
    leaves no run folder behind. `examples`: the `SplitExamples` of an
    earlier `prepare_data(config)`, so they are not read again. `data`: a
    `datasets.Dataset`/`DatasetDict` (or list of row dicts) to train on
    instead of `config.data`; the saved config then says
    `"python:SPLIT"`, and `load_run`/`resume` need the same `data` again.
    """
    config, examples = _with_python_data(config, data, examples, progress)
    config = resolve_precision(config.validate())
    run_dir, created = _new_run_folder(config, run_dir)
    return _start_in(config, run_dir, created, progress, examples)


def train(config, run_dir=None, progress=True, data=None):
    """Start a run, train it and save its LoRA weights; returns the finished `Run`.

    Like `start_run` (`data`: a `datasets.Dataset` or `DatasetDict` to train
    on instead of `config.data`), and the run folder is locked while it
    trains, so a second `train`, `resume` or `export` of it refuses instead
    of racing.
    """
    config, examples = _with_python_data(config, data, None, progress)
    config = resolve_precision(config.validate())
    run_dir, created = _new_run_folder(config, run_dir)
    with run_lock(run_dir, "train"):
        run = _start_in(config, run_dir, created, progress, examples)
        run.fit()
        run.save_lora()
    return run


def _with_python_data(config, data, examples, progress):
    """`(config, examples)`: with `data` held in Python, config.data names it and its examples are loaded."""
    if data is None:
        return config, examples
    _, name = pick_split(data, config.split)
    config = dataclasses.replace(config, data=PYTHON_PREFIX + name)
    return config, examples or load_data(config, progress=progress, data=data)


def _saved_config(run_dir):
    """The `TrainConfig` saved in a run folder, after checking it is one."""
    config_path = Path(run_dir) / files.RUN_CONFIG
    if not config_path.is_file():
        raise MissingFileError(f"{run_dir} is not a run folder: {files.RUN_CONFIG} is missing.")
    return TrainConfig.from_file(config_path).validate(str(config_path))


def load_run(run_dir, progress=True, data=None):
    """A finished (or interrupted) run, back in memory at its newest good checkpoint.

    Rebuilds data and model from the saved config and loads the newest
    checkpoint whose checksum holds; nothing in the folder is changed. For
    answering questions or exporting later in a new session.
    """
    run_dir = Path(run_dir)
    config = _saved_config(run_dir)
    run = _build_run(config, run_dir, progress, _python_examples(config, data, progress))
    latest = checkpoint.latest_good_checkpoint(run_dir)
    if latest is None:
        raise UserError(f"{run_dir} has no usable checkpoint: nothing to load (train or resume it first).")
    run.trainer.restore(latest, keep_later_metrics=True)
    run.summary = training_summary(run_dir)
    return run


def _python_examples(config, data, progress):
    """The examples of `data` for a run trained on data held in Python (None otherwise)."""
    if data is None:
        return None
    return load_data(config, progress=progress, data=data)


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
            f"{Path(latest).parent.parent / files.RUN_CONFIG} was edited since {latest.name} in ways a resume "
            f"cannot honour: {', '.join(refused)}; undo them, or start a new run with `kerasgemma train`."
        )
    if allowed:
        log(f"resuming with changed settings: {', '.join(allowed)}")


def resume(run_dir, progress=True, data=None, fit=True):
    """Continue a run from its newest good checkpoint (or from the start).

    The config is the one saved in the run folder, so the data, model and
    batches are rebuilt exactly; the steps after the checkpoint are run again
    and their metrics and sample answers from the killed run are replaced.
    A damaged checkpoint (its checksum fails) is skipped with a warning.
    `fit=False` returns the `Run` restored at its checkpoint without
    training, for a notebook whose next cell calls `run.fit()` (after a
    Colab disconnect, say).
    """
    run_dir = Path(run_dir)
    config = _saved_config(run_dir)
    check_writable(run_dir)
    with run_lock(run_dir, "resume"):
        latest = checkpoint.latest_good_checkpoint(run_dir)
        if latest is not None:
            check_resumable(config, latest)
        elif checkpoint.list_checkpoints(run_dir):
            print(f"warning: no usable checkpoint in {run_dir / files.CHECKPOINTS_DIR}; starting again from step 0")
        run = _build_run(config, run_dir, progress, _python_examples(config, data, progress))
        if latest is not None:
            run.trainer.restore(latest)
            print(f"resuming from {latest.name}")
        truncate_jsonl(run_dir / files.SAMPLES, run.trainer.step)
        if fit:
            run.fit()
            run.save_lora()
    return run
