"""The whole data stage for a `TrainConfig`: load, split, tokenize, batch, summarise.

`kerasgemma data`, `kerasgemma train` and the notebooks all call this one
entry point, so a data file reports the same numbers everywhere. Each step
is also a public function of `kerasgemma.data` for people who want to stop
in between.
"""

import dataclasses
import importlib

from kerasgemma.data.batching import Batches
from kerasgemma.data.loading import load_source_examples
from kerasgemma.data.split import split_examples
from kerasgemma.data.tokenize import tokenize_examples
from kerasgemma.errors import UserError
from kerasgemma.tiny_tokenizer import TINY_PREFIX
from kerasgemma.tiny_tokenizer import tiny_tokenizer_proto

# Loaded on first use: kerasgemma.model imports keras-hub, hence TensorFlow
# (seconds), which a `tiny:` preset's data stage does not need.
MODEL_MODULE = "kerasgemma.model"


@dataclasses.dataclass
class SplitExamples:
    """Validated chat examples of a source, split, with the `LoadReport` of loading."""

    train: list
    validation: list
    load_report: object

    def texts(self):
        """Every message text of the training examples (what a tiny tokenizer is trained on)."""
        return [message["content"] for example in self.train for message in example["messages"]]


@dataclasses.dataclass
class PreparedData:
    """Training and validation batches with the examples and the reports of every step.

    Args:
        examples: `SplitExamples`, the validated examples before tokenizing.
        train: `Batches` of the training examples.
        validation: `Batches` of the validation examples, or None.
        token_report: `TokenReport` of the training examples.
        validation_token_report: `TokenReport` of the validation examples, or None.
    """

    examples: SplitExamples
    train: Batches
    validation: Batches | None
    token_report: object
    validation_token_report: object = None

    def summary(self):
        """All counts as one flat, JSON-ready dict (what `data_report.json` holds)."""
        train = self.train
        lengths = [len(example.token_ids) - 1 for example in train.examples]
        padded_fraction = sum(lengths) / (len(lengths) * train.sequence_length)
        summary = self.examples.load_report.to_dict()
        summary.update(
            train_examples=len(self.examples.train),
            validation_examples=len(self.examples.validation),
            **{
                key: value
                for key, value in self.token_report.to_dict().items()
                if key not in ("examples", "kept")  # Counted above, after the split.
            },
            batching=train.mode,
            batch_size=train.batch_size,
            sequence_length=train.sequence_length,
            batches_per_epoch=len(train),
            batch_shapes=[list(shape) for shape in train.shapes],
            non_padding_fraction=round(train.non_padding_fraction, 4),
            non_padding_fraction_if_padded=round(padded_fraction, 4),
        )
        if self.validation_token_report:
            summary["validation_truncated"] = self.validation_token_report.truncated
            summary["validation_dropped"] = self.validation_token_report.dropped
        return summary


def preset_tokenizer(preset, texts=()):
    """What the data stage tokenizes with for `preset`: SentencePiece bytes or a keras-hub tokenizer.

    A `tiny:` preset's model bytes come from `sentencepiece` alone; any
    other preset's tokenizer is `kerasgemma.model.load_tokenizer`'s (keras-hub).
    `tokenize_examples` runs both through the same SentencePiece processor,
    so the ids are those of the model's own tokenizer.

    Example:
    >>> isinstance(preset_tokenizer("tiny:gemma3"), bytes)
    True
    """
    if preset.startswith(TINY_PREFIX):
        return tiny_tokenizer_proto(preset[len(TINY_PREFIX):], texts)
    return importlib.import_module(MODEL_MODULE).load_tokenizer(preset, texts=texts)


def load_data(config, progress=False, data=None):
    """Load, validate and split the examples `config.data` (or `data`) names.

    Args:
        config: `TrainConfig`. Reads data, format, columns, split, subset,
            answers, include_chatgpt, on_error, validation_fraction, seed.
        progress: bool. Show a progress bar while reading rows.
        data: None (read `config.data`), or a `datasets.Dataset`,
            `DatasetDict` (`config.split` picks the split) or list of row
            dicts held in Python; rows are then named `split[index]`.

    Returns:
        `SplitExamples`.
    """
    examples, load_report = load_source_examples(
        config.data if data is None else data,
        split=config.split,
        format=config.format,
        columns=config.columns,
        subset=config.subset,
        answers=config.answers,
        include_chatgpt=config.include_chatgpt,
        on_error=config.on_error,
        progress=progress,
    )
    train, validation = split_examples(examples, config.validation_fraction, config.seed)
    return SplitExamples(train, validation, load_report)


def prepare_data(config, tokenizer=None, examples=None, progress=False, data=None):
    """Load (unless given), tokenize and batch the data of `config`.

    Args:
        config: `TrainConfig`. Besides `load_data`'s settings: template,
            loss, overflow, sequence_length, batch_size, batching, seed.
        tokenizer: the model's keras-hub tokenizer, SentencePiece bytes, or
            None for the tokenizer of `config.preset`.
        examples: `SplitExamples` already loaded, or None to load them.
        progress: bool. Show a progress bar while reading rows.
        data: a `datasets.Dataset`/`DatasetDict` (or list of row dicts) to
            read instead of `config.data` (see `load_data`).

    Returns:
        A `PreparedData`.

    Example:
    >>> import json, pathlib, tempfile
    >>> from kerasgemma.config import TrainConfig
    >>> from kerasgemma.tiny import build_tiny_tokenizer_proto
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "baike.jsonl"
    >>> rows = [{"question": f"问题{i}", "human_answers": [f"答案{i}"]} for i in range(20)]
    >>> _ = path.write_text("\\n".join(json.dumps(r) for r in rows))
    >>> config = TrainConfig(data=str(path), sequence_length=64, batch_size=2)
    >>> summary = prepare_data(config, build_tiny_tokenizer_proto()).summary()
    >>> summary["train_examples"], summary["validation_examples"], summary["batching"]
    (19, 1, 'pack')
    """
    examples = examples or load_data(config, progress=progress, data=data)
    tokenizer = tokenizer or preset_tokenizer(config.preset, texts=examples.texts())
    # n token ids give n - 1 (input, target) positions: sequence_length + 1 fill a row.
    token_options = dict(
        max_tokens=config.sequence_length + 1,
        template=config.template,
        loss=config.loss,
        overflow=config.overflow,
    )
    batch_options = dict(
        batch_size=config.batch_size,
        sequence_length=config.sequence_length,
        mode=config.batching,
        seed=config.seed,
    )
    train_tokens, token_report = tokenize_examples(examples.train, tokenizer, **token_options)
    if not train_tokens:
        raise UserError(
            f"{config.data if data is None else 'data'}: no training example fits sequence_length={config.sequence_length} "
            f"({token_report.to_dict()}); raise sequence_length or use overflow='truncate'."
        )
    prepared = PreparedData(examples, Batches(train_tokens, **batch_options), None, token_report)
    if examples.validation:
        validation_tokens, prepared.validation_token_report = tokenize_examples(
            examples.validation, tokenizer, **token_options
        )
        if validation_tokens:
            prepared.validation = Batches(validation_tokens, **batch_options)
    return prepared
