"""One typed configuration for a training run, round-tripping through YAML/JSON.

Defaults follow the reference task: Gemma + LoRA rank 4 on query/value,
HC3-Chinese `baike`, human answers, Gemma chat format, loss on the answers.

Example:
>>> config = TrainConfig(max_steps=3)
>>> TrainConfig.from_dict(config.to_dict()) == config
True
"""

import dataclasses
import difflib
import json
import logging
import os
import types
import typing
from pathlib import Path

import yaml

from kerasgemma.atomic import write_json_atomic
from kerasgemma.data.batching import MODES
from kerasgemma.data.chat_format import TEMPLATES
from kerasgemma.data.formats import FORMAT_CHOICES
from kerasgemma.data.formats import parse_columns
from kerasgemma.data.loading import DATASETS_PREFIX
from kerasgemma.data.loading import PYTHON_PREFIX
from kerasgemma.data.loading import HC3_SOURCE
from kerasgemma.data.loading import HC3_SUBSETS
from kerasgemma.data.loading import HUB_PREFIX
from kerasgemma.data.loading import ON_ERROR_CHOICES
from kerasgemma.data.rows import ANSWER_CHOICES
from kerasgemma.data.tokenize import LOSS_CHOICES
from kerasgemma.data.tokenize import OVERFLOW_CHOICES
from kerasgemma.errors import MissingFileError
from kerasgemma.errors import UserError

# Distribution kinds (`kerasgemma.distribution.strategy` imports them from here,
# so that reading a config does not import jax and Keras).
KINDS = ("auto", "data", "model", "none")
# Defined here, not in kerasgemma.quantization / kerasgemma.remat (which use
# them), so that reading a config imports neither Keras nor JAX.
QUANTIZE_MODES = ("int8", "int4")
REMAT_CHOICES = ("none", "block", "dots")

DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "linear", "constant")
# Settings `resume` may take from an edited config.json: they change when
# the run stops, what it logs or where, never what one step computes.
RESUMABLE_CHANGES = (
    "max_steps", "epochs", "eval_every", "save_every", "keep_checkpoints",
    "sample_prompts", "max_new_tokens", "output_dir", "distribution", "mesh", "remat",
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; the resolved copy is saved in the run folder.

    Args (all keyword, all with defaults):
        preset: a keras-hub preset (Kaggle name such as "gemma_2b_en" or
            "gemma3_1b", "kaggle://…", "hf://…", a local preset folder),
            "offline:gemma3_270m" (built from PyPI) or "tiny:gemma",
            "tiny:gemma2", "tiny:gemma3", "tiny:gemma4", "tiny:gemma4-moe"
            (random tiny models). Multimodal presets are fine and train on
            text: Gemma 3 4B and larger ("gemma3_4b", "gemma3_instruct_4b",
            …) and every Gemma 4 preset ("gemma4_2b", "gemma4_instruct_4b",
            "gemma4_26b_a4b", "gemma4_31b", …). Their vision/audio towers
            are loaded but get empty inputs, no LoRA and no gradient.
        dtype: base-weight dtype, "auto" = bfloat16 on TPUs and NVIDIA GPUs
            of compute capability 8.0+, float16 with dynamic loss scaling on
            older NVIDIA GPUs (T4, V100, P100), float32 on CPU
            (`kerasgemma.precision`); a run saves the dtype it chose. LoRA
            weights are always float32.
        quantize: None, "int8" or "int4": store the frozen base weights
            quantized (weight-only, Keras' `quantize`), QLoRA-style; compute
            and LoRA stay in `dtype`/float32. See `kerasgemma.quantization`.
        remat: "none", "block" (recompute each decoder block in the
            backward pass) or "dots" (keep the projections' and the fused
            attention's outputs, recompute the rest): less activation memory
            for more compute (on an H200 "dots" took 19-35% off the peak for
            0-7% of the speed). See `kerasgemma.remat`.
        data: a local file/folder, "hub" for Hello-SimpleAI/HC3-Chinese, or
            "hub:OWNER/NAME[:CONFIG][@SPLIT]" for any parquet/json Hub
            dataset (read through `datasets`). A `datasets.Dataset` goes to
            `prepare_data(config, data=...)` / `train(config, data=...)`.
        format: row form: "auto" (detected per file), "alpaca", "sharegpt",
            "prompt_completion", "messages" or "hc3".
        columns: rename your columns to the form's fields, as
            "NAME=COLUMN,..." (e.g. "instruction=query,output=response";
            "question=prompt,answer=response" for a plain question/answer).
        split: split of a `datasets.DatasetDict` or "hub:" dataset (None =
            "train", or the only split).
        subset: HC3 subset, e.g. "baike".
        answers: "first" answer per question or "all" answers.
        include_chatgpt: also train on ChatGPT answers.
        on_error: "raise" on a bad row, or "skip" and count it.
        template: "gemma" (the model's own chat format, from its tokenizer:
            `<start_of_turn>` for Gemma 1–3, `<|turn>` for Gemma 4, thinking
            off) or the reference notebook's "plain".
        loss: "completion" (model turns only) or "full" (every token).
        overflow: "truncate" (cut the answer's end) or "drop" long examples.
        batching: "pack" (default), "bucket" or "pad".
        sequence_length: tokens per row.
        batch_size: rows per micro-batch.
        grad_accum_steps: micro-batches per optimizer step.
        validation_fraction: share of examples held out for validation.
        lora_rank: LoRA rank. There is no LoRA dropout: Keras' LoRA
            (`Dense`/`EinsumDense.enable_lora`) has none, and the train step
            runs the model with `training=False`.
        lora_alpha: LoRA alpha; the update is scaled by alpha / rank
            (None = rank).
        lora_targets: layers that get LoRA: "query,value" (any
            comma-separated layer names), "attention" or "all", in the text
            decoder blocks only (never a vision/audio tower). Gemma 4: a
            block without a target is skipped there (no `value` on K=V global
            layers, no `key`/`value` on KV-shared layers); for the MoE models
            LoRA goes on the attention and the dense MLP beside the experts,
            and the experts and router stay frozen.
        learning_rate: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (never on biases, norms, embeddings).
        warmup_steps: linear warm-up steps before the decay.
        schedule: decay after warm-up: "cosine", "linear" or "constant".
        max_grad_norm: gradient clipping by global norm (None = no clipping).
        max_steps: optimizer steps (None = `epochs` passes over the data).
        epochs: passes over the data when `max_steps` is None.
        eval_every: validation every N steps (0 = only at the end).
        save_every: checkpoint every N steps (0 = only at the end).
        keep_checkpoints: how many of the newest checkpoints to keep.
        sample_prompts: questions answered at each evaluation.
        max_new_tokens: length of those sample answers.
        distribution: "auto" (choose from the model size and the devices),
            "data", "model" or "none"; see `kerasgemma.distribution`.
        mesh: `(batch, model)` device mesh such as "2x4", or None to choose.
        seed: seed for the data split and order and the LoRA
            initialisation; nothing else is random while training, so the
            same seed and config give the same losses on the same device.
        output_dir: folder under which the run folder is created.
    """
    preset: str = "gemma_2b_en"
    dtype: str = "auto"
    quantize: str | None = None
    remat: str = "none"
    data: str = "hub"
    format: str = "auto"
    columns: str | None = None
    split: str | None = None
    subset: str = "baike"
    answers: str = "first"
    include_chatgpt: bool = False
    on_error: str = "raise"
    template: str = "gemma"
    loss: str = "completion"
    overflow: str = "truncate"
    batching: str = "pack"
    sequence_length: int = 512
    batch_size: int = 4
    grad_accum_steps: int = 1
    validation_fraction: float = 0.05
    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_targets: str = "query,value"
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "cosine"
    max_grad_norm: float | None = 1.0
    max_steps: int | None = None
    epochs: int = 1
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    sample_prompts: list[str] = dataclasses.field(default_factory=list)
    max_new_tokens: int = 64
    distribution: str = "auto"
    mesh: str | None = None
    seed: int = 0
    output_dir: str = "runs"

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, allow_unknown_keys=False):
        """Build from a dict; an unknown key is a `UserError` (with a "did you mean")
        unless `allow_unknown_keys`, which warns and ignores it.

        Values are converted to the field's type where that is lossless:
        PyYAML reads `learning_rate: 1e-4` as the *string* "1e-4" (YAML 1.1
        wants `1.0e-4`), which would otherwise fail deep inside the optimizer.

        Example:
        >>> TrainConfig.from_dict({"lora_rnak": 8})
        Traceback (most recent call last):
        ...
        kerasgemma.errors.UserError: unknown setting 'lora_rnak' (did you mean 'lora_rank'?)
        """
        hints = typing.get_type_hints(cls)
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown and not allow_unknown_keys:
            raise UserError("; ".join(_unknown_key(key, names) for key in unknown))
        if unknown:
            logger.warning("Ignoring unknown config keys: %s", ", ".join(unknown))
        return cls(**{key: _coerce(key, hints[key], value) for key, value in values.items() if key in names})

    @classmethod
    def from_file(cls, path, base=None, allow_unknown_keys=False):
        """Load from a `.yaml`/`.yml` or `.json` file; keys it lacks come from `base`.

        Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "run.yaml"
        >>> _ = path.write_text("learning_rate: 1e-4\\nlora_rank: 8\\n")
        >>> config = TrainConfig.from_file(path, base=TrainConfig(max_steps=5))
        >>> config.learning_rate, config.lora_rank, config.max_steps
        (0.0001, 8, 5)
        """
        values = dict((base or cls()).to_dict())
        values.update(read_config_file(path))
        try:
            return cls.from_dict(values, allow_unknown_keys=allow_unknown_keys)
        except UserError as error:
            raise UserError(f"{path}: {error}") from error

    def problems(self):
        """One line per setting that cannot train (empty when all can).

        Checked before a run folder is made, so a typo costs a second and
        leaves nothing behind.

        Example:
        >>> TrainConfig(sequence_length=0, learning_rate=-1.0, schedule="cosin").problems()
        ["schedule must be one of ('cosine', 'linear', 'constant'), got 'cosin'", \
'sequence_length must be at least 2, got 0', 'learning_rate must be > 0, got -1.0']
        """
        found = []
        enums = {
            "dtype": DTYPES, "format": FORMAT_CHOICES, "subset": HC3_SUBSETS, "answers": ANSWER_CHOICES, "on_error": ON_ERROR_CHOICES,
            "template": TEMPLATES, "loss": LOSS_CHOICES, "overflow": OVERFLOW_CHOICES, "batching": MODES,
            "schedule": SCHEDULES, "distribution": KINDS, "remat": REMAT_CHOICES,
        }
        for name, choices in enums.items():
            if getattr(self, name) not in choices:
                found.append(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        # (name, bound, whether the bound itself is allowed)
        bounds = [
            ("sequence_length", 2, True), ("batch_size", 1, True), ("grad_accum_steps", 1, True),
            ("validation_fraction", 0, True), ("lora_rank", 1, True), ("lora_alpha", 0, False),
            ("learning_rate", 0, False), ("weight_decay", 0, True), ("warmup_steps", 0, True),
            ("max_grad_norm", 0, False), ("max_steps", 1, True), ("epochs", 1, True), ("eval_every", 0, True),
            ("save_every", 0, True), ("keep_checkpoints", 1, True), ("max_new_tokens", 1, True),
        ]
        for name, low, inclusive in bounds:
            value = getattr(self, name)
            if value is not None and (value < low if inclusive else value <= low):
                found.append(f"{name} must be {'at least' if inclusive else '>'} {low}, got {value!r}")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            found.append(f"quantize must be one of {QUANTIZE_MODES} or None, got {self.quantize!r}")
        if not self.validation_fraction < 1:
            found.append(f"validation_fraction must be below 1, got {self.validation_fraction!r}")
        found += _call_problem("lora_targets", self.lora_targets, "kerasgemma.model", "resolve_lora_targets")
        found += _call_problem("mesh", self.mesh, "kerasgemma.distribution.strategy", "parse_mesh")
        try:
            parse_columns(self.columns)
        except UserError as error:
            found.append(str(error))
        remote = self.data == HC3_SOURCE or self.data.startswith((HUB_PREFIX, DATASETS_PREFIX, PYTHON_PREFIX))
        if not remote and not os.path.exists(self.data):
            found.append(f"data: no such file or folder {self.data!r}")
        return found

    def validate(self, source="settings"):
        """Raise one `UserError` listing every problem (one per line), else return self.

        Example:
        >>> TrainConfig(batch_size=0).validate()
        Traceback (most recent call last):
        ...
        kerasgemma.errors.UserError: settings: batch_size must be at least 1, got 0
        """
        found = self.problems()
        if found:
            raise UserError("\n".join(f"{source}: {problem}" for problem in found))
        return self

    def changes_from(self, saved):
        """`(refused, allowed)`: "name old -> new" for each setting that differs from `saved`.

        `allowed` are those `resume` can honour (`RESUMABLE_CHANGES`).

        Example:
        >>> TrainConfig(max_steps=9, lora_rank=8).changes_from(TrainConfig(max_steps=5).to_dict())
        (['lora_rank 4 -> 8'], ['max_steps 5 -> 9'])
        """
        refused, allowed = [], []
        for key, value in self.to_dict().items():
            if key in saved and saved[key] != value:
                line = f"{key} {saved[key]!r} -> {value!r}"
                (allowed if key in RESUMABLE_CHANGES else refused).append(line)
        return refused, allowed

    def save(self, path):
        """Write as JSON (sorted keys, indented) atomically."""
        write_json_atomic(path, self.to_dict())


def read_config_file(path):
    """The settings mapping of a `.yaml`/`.yml` or `.json` file, unvalidated."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"Config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        values = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        # PyYAML's message spans lines; the error stays one line.
        message = " ".join(str(error).split())
        raise UserError(f"{path}: not valid {path.suffix[1:].upper() or 'JSON'}: {message}") from error
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return values


def _coerce(name, hint, value):
    """`value` as the type `hint` of field `name`, or a ValueError naming the field."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        if value is None:
            return None
        hint = next(arg for arg in args if arg is not type(None))
    try:
        if hint is bool and isinstance(value, bool):
            return value
        if hint is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if hint is str and isinstance(value, str):
            return value
        if typing.get_origin(hint) is list:
            items = [value] if isinstance(value, str) else value
            if isinstance(items, (list, tuple)):
                return [_coerce(name, typing.get_args(hint)[0], item) for item in items]
    except ValueError:
        pass
    raise UserError(f"Config key {name!r}: expected {getattr(hint, '__name__', hint)}, got {value!r}.")


def _unknown_key(key, names):
    """"unknown setting 'x'" with the closest real name, if one is close.

    Example:
    >>> _unknown_key("bogus", ["lora_rank"])
    "unknown setting 'bogus' (pass --allow-unknown-keys to ignore it)"
    """
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "pass --allow-unknown-keys to ignore it"
    return f"unknown setting {key!r} ({hint})"


def _call_problem(name, value, module, function):
    """`[f"{name}: message"]` if `module.function(value)` raises ValueError, else `[]`."""
    import importlib

    try:
        getattr(importlib.import_module(module), function)(value)
    except ValueError as error:
        return [f"{name}: {error}"]
    return []
