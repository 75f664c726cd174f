"""The whole data stage in one call: load, split, tokenize, batch, and summarize.

This is what `kerasgemma data` and the notebooks run; each step is also a
public function of `kerasgemma.data` for people who want to stop in between.
"""

import dataclasses

from kerasgemma.data.batching import Batches
from kerasgemma.data.loading import load_examples, load_hub_examples
from kerasgemma.data.split import split_examples
from kerasgemma.data.tokenize import tokenize_examples

HUB_PREFIX = "hf://"


@dataclasses.dataclass
class PreparedData:
    """Training and validation batches with the reports of every step.

    Args:
        train: `Batches` of the training examples.
        validation: `Batches` of the validation examples, or None.
        load_report: `LoadReport` of loading.
        token_report: `TokenReport` of the training examples.
        validation_token_report: `TokenReport` of the validation examples, or None.
    """

    train: Batches
    validation: Batches
    load_report: object
    token_report: object
    validation_token_report: object = None

    def summary(self):
        """All counts as one flat, JSON-ready dict."""
        train = self.train
        lengths = [len(example.token_ids) - 1 for example in train.examples]
        padded_fraction = sum(lengths) / (len(lengths) * train.sequence_length)
        summary = self.load_report.to_dict()
        summary.update(
            train_examples=len(train.examples),
            validation_examples=len(self.validation.examples) if self.validation else 0,
            **{
                key: value
                for key, value in self.token_report.to_dict().items()
                if key not in ("examples", "kept")  # Counted above, after the split.
            },
            batch_mode=train.mode,
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


def prepare_data(
    source,
    tokenizer,
    sequence_length=512,
    batch_size=8,
    mode="pack",
    validation_fraction=0.05,
    seed=0,
    subset="baike",
    answers="first",
    include_chatgpt=False,
    on_error="raise",
    template="gemma",
    loss="completion",
    overflow="truncate",
    progress=False,
):
    """Load, validate, split, tokenize and batch a dataset.

    Args:
        source: str or path. A local file or folder (see `load_examples`), or
            `"hf://OWNER/NAME"` for a Hub dataset laid out like HC3-Chinese.
        tokenizer: the model's tokenizer (keras-hub) or SentencePiece bytes.
        sequence_length: int. Tokens per batch row.
        batch_size: int. Rows per batch.
        mode: str. "pack" (default), "bucket" or "pad" (see `Batches`).
        validation_fraction: float. Share of questions held out.
        seed: int. Seed of the split, the packing and the epoch shuffles.
        subset, answers, include_chatgpt, on_error: see `load_examples`.
        template, loss, overflow: see `tokenize_examples`.
        progress: bool. Show a progress bar while reading rows.

    Returns:
        A `PreparedData`.

    Example:
    >>> import json, pathlib, tempfile
    >>> from kerasgemma.tiny import build_tiny_tokenizer_proto
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "baike.jsonl"
    >>> rows = [{"question": f"问题{i}", "human_answers": [f"答案{i}"]} for i in range(20)]
    >>> _ = path.write_text("\\n".join(json.dumps(r) for r in rows))
    >>> data = prepare_data(path, build_tiny_tokenizer_proto(), sequence_length=64, batch_size=2)
    >>> data.summary()["train_examples"], data.summary()["validation_examples"]
    (19, 1)
    """
    load_options = dict(
        subset=subset,
        answers=answers,
        include_chatgpt=include_chatgpt,
        on_error=on_error,
        progress=progress,
    )
    source = str(source)
    if source.startswith(HUB_PREFIX):
        examples, load_report = load_hub_examples(source[len(HUB_PREFIX) :], **load_options)
    else:
        examples, load_report = load_examples(source, **load_options)
    train, validation = split_examples(examples, validation_fraction, seed)
    # n token ids give n - 1 (input, target) positions: sequence_length + 1 fill a row.
    token_options = dict(
        max_tokens=sequence_length + 1, template=template, loss=loss, overflow=overflow
    )
    train_tokens, token_report = tokenize_examples(train, tokenizer, **token_options)
    if not train_tokens:
        raise ValueError(f"{source}: every training example was dropped ({token_report.to_dict()}).")
    batch_options = dict(
        batch_size=batch_size, sequence_length=sequence_length, mode=mode, seed=seed
    )
    train_batches = Batches(train_tokens, **batch_options)
    prepared = PreparedData(train_batches, None, load_report, token_report)
    if validation:
        validation_tokens, prepared.validation_token_report = tokenize_examples(
            validation, tokenizer, **token_options
        )
        if validation_tokens:
            prepared.validation = Batches(validation_tokens, **batch_options)
    return prepared
