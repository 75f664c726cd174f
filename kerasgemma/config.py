"""One typed configuration for a training run, round-tripping through YAML/JSON.

Defaults follow the reference task: Gemma + LoRA rank 4 on query/value,
HC3-Chinese `baike`, human answers, Gemma chat format, loss on the answers.

Example:
>>> config = TrainConfig(max_steps=3)
>>> TrainConfig.from_dict(config.to_dict()) == config
True
"""

import dataclasses
import json
import logging
import types
import typing
from pathlib import Path

import yaml

CONFIG_FILE_NAME = "config.json"

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
        dtype: base-weight dtype, "auto" = bfloat16 on accelerators, float32
            on CPU. LoRA weights are always float32.
        data: a local file/folder, or "hub" for Hello-SimpleAI/HC3-Chinese.
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
    data: str = "hub"
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
    def from_dict(cls, values):
        """Build from a dict, warning about (and ignoring) unknown keys.

        Values are converted to the field's type where that is lossless:
        PyYAML reads `learning_rate: 1e-4` as the *string* "1e-4" (YAML 1.1
        wants `1.0e-4`), which would otherwise fail deep inside the optimizer.
        """
        hints = typing.get_type_hints(cls)
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            logger.warning("Ignoring unknown config keys: %s", ", ".join(unknown))
        return cls(**{key: _coerce(key, hints[key], value) for key, value in values.items() if key in names})

    @classmethod
    def from_file(cls, path, base=None):
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
        return cls.from_dict(values)

    def save(self, path):
        """Write as JSON (sorted keys, indented) atomically."""
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        temporary.replace(path)


def read_config_file(path):
    """The settings mapping of a `.yaml`/`.yml` or `.json` file, unvalidated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        values = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid {path.suffix[1:].upper() or 'JSON'}: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
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
    raise ValueError(f"Config key {name!r}: expected {getattr(hint, '__name__', hint)}, got {value!r}.")
