"""Load rows of any supported form from a file, a folder, a `datasets` object or the Hub into examples.

An example is a plain dict:
`{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}],
"source": "baike.jsonl:12"}`. Loading also returns a `LoadReport` with rows
read, examples kept, rows skipped by reason and duplicates removed.
"""

import os

from kerasgemma.errors import UserError
from kerasgemma.data.formats import AUTO, parse_columns, to_conversations, with_forms
from kerasgemma.data.readers import (
    EMPTY_FILE,
    UNSUPPORTED_FILE,
    Row,
    list_data_files,
    table_columns,
    read_rows,
    unsupported_files,
)
from kerasgemma.data.report import LoadReport
from kerasgemma.data.rows import RowError

HC3_REPO_ID = "Hello-SimpleAI/HC3-Chinese"
# `data` values that mean the Hub: "hub" (HC3-Chinese itself), "hf://OWNER/NAME"
# (laid out like HC3-Chinese) or "hub:OWNER/NAME[:CONFIG][@SPLIT]" (any
# parquet/json dataset repo, read through `datasets.load_dataset`).
HC3_SOURCE = "hub"
HUB_PREFIX = "hf://"
DATASETS_PREFIX = "hub:"
# The `data` a run saves when it read a `datasets.Dataset` held in Python ("python:SPLIT").
PYTHON_PREFIX = "python:"
HC3_SUBSETS = ("baike", "finance", "law", "medicine", "nlpcc_dbqa", "open_qa", "psychology", "all")
ON_ERROR_CHOICES = ("raise", "skip")


class DataError(UserError):
    """A bad row, raised with its `source` ("FILE:LINE") and problem `kind`."""

    def __init__(self, source, kind, message):
        super().__init__(f"{source}: {message} [{kind}]")
        self.source = source
        self.kind = kind


def load_examples(
    path,
    subset="baike",
    answers="first",
    include_chatgpt=False,
    on_error="raise",
    progress=False,
    format=AUTO,
    columns=None,
):
    """Read, validate and deduplicate the examples of a file or folder (or of rows a user holds).

    Args:
        path: str or path. A `.jsonl`, `.json` or `.parquet` file, or a
            folder of them (a folder holding `{subset}.jsonl` reads only that).
            Or a `datasets.Dataset`, `DatasetDict` or list of row dicts,
            read by `load_dataset_examples`.
        subset: str. HC3 subset to pick inside a folder: one of `HC3_SUBSETS`.
        answers: str. "first" answer per question, or "all" answers.
        include_chatgpt: bool. Also train on `chatgpt_answers`.
        on_error: str. "raise" stops at the first bad row with a `DataError`
            naming file, line and problem; "skip" skips it and counts it.
        progress: bool. Show a tqdm progress bar over rows.
        format: str. "auto" (detect each file's row form) or one of
            `kerasgemma.data.formats.FORMS`.
        columns: str, dict or None. "NAME=COLUMN,..." renaming a file's
            columns to the names a form uses (`formats.parse_columns`).

    Returns:
        `(examples, report)`: a list of example dicts and a `LoadReport`
        (`report.formats` names each file's row form).

    Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "baike.jsonl"
    >>> _ = path.write_text(
    ...     '{"question": "什么是熊猫？", "human_answers": ["一种熊。"], "chatgpt_answers": []}\\n'
    ...     '{"question": "什么是熊猫？", "human_answers": ["一种熊。"], "chatgpt_answers": []}\\n'
    ...     '{"question": 3}\\n', encoding="utf-8")
    >>> examples, report = load_examples(path, on_error="skip")
    >>> examples[0]["messages"][1]["content"], examples[0]["source"].split("/")[-1]
    ('一种熊。', 'baike.jsonl:1')
    >>> report.rows_read, report.examples, report.duplicates_removed, report.skipped
    (3, 1, 1, {'wrong_type': 1})
    >>> examples, report = load_examples([{"instruction": "把它译成英文：你好", "output": "Hello"}])
    >>> report.formats, examples[0]["source"]
    ({'rows': 'alpaca'}, 'rows[0]')
    """
    if not isinstance(path, (str, os.PathLike)):
        return load_dataset_examples(path, answers=answers, include_chatgpt=include_chatgpt, on_error=on_error,
                                     progress=progress, format=format, columns=columns)
    _check_on_error(on_error)
    if subset not in HC3_SUBSETS:
        raise UserError(f"subset must be one of {HC3_SUBSETS}, got {subset!r}.")
    report = LoadReport(files=list_data_files(path, subset=subset))
    ignored = unsupported_files(path, subset=subset)
    if ignored and on_error == "raise":
        raise UserError(
            f"{os.fspath(path)}: unsupported file(s) {', '.join(map(os.path.basename, ignored[:5]))}"
            f"{' …' if len(ignored) > 5 else ''} beside the data; convert them to .jsonl/.json/.csv/.parquet, "
            "move them out, or pass --on-error skip to leave them out."
        )
    if ignored:
        report.skipped[UNSUPPORTED_FILE] = len(ignored)
    tables = [
        (filename, read_rows(filename), table_columns(filename))
        for filename in report.files
    ]
    options = dict(answers=answers, include_chatgpt=include_chatgpt, on_error=on_error, progress=progress,
                   format=format, columns=columns)
    return _load(os.fspath(path), tables, report, **options)


def load_dataset_examples(dataset, split=None, **kwargs):
    """Examples of a `datasets.Dataset` or `DatasetDict` (or a list of row dicts), as a user holds it.

    Rows are named `split[index]` in errors and in each example's `source`.

    Args:
        dataset: a `datasets.Dataset`, `IterableDataset`, `DatasetDict`
            (`split` picks one) or a list of dicts.
        split: str or None. The split of a `DatasetDict`; None takes
            "train", or the only split. Also the name rows are given.
        **kwargs: answers, include_chatgpt, on_error, progress, format,
            columns, as for `load_examples`.

    Returns:
        `(examples, report)` as `load_examples`.

    Example:
    >>> rows = [{"instruction": "问候", "output": "你好！"}, {"instruction": "", "output": "x"}]
    >>> examples, report = load_dataset_examples(rows, on_error="skip")
    >>> examples[0]["source"], report.formats, report.skipped
    ('rows[0]', {'rows': 'alpaca'}, {'empty_question': 1})
    """
    _check_on_error(kwargs.get("on_error", "raise"))
    dataset, name = pick_split(dataset, split)
    columns = getattr(dataset, "column_names", None)
    rows = (Row(f"{name}[{index}]", value=value) for index, value in enumerate(dataset))
    return _load(name, [(name, rows, columns)], LoadReport(files=[name]), **kwargs)


def pick_split(dataset, split=None):
    """`(dataset, split name)`: the split `split` of a `DatasetDict`, or `dataset` itself.

    Example:
    >>> pick_split({"train": [1], "test": [2]}, "test")
    ([2], 'test')
    >>> pick_split({"dev": [1], "test": [2]})
    Traceback (most recent call last):
    ...
    kerasgemma.errors.UserError: the dataset has splits dev, test and no 'train'; pick one with split=NAME (--split NAME).
    """
    if isinstance(dataset, (list, tuple)):
        return dataset, split or "rows"
    if isinstance(dataset, dict):  # A DatasetDict (or IterableDatasetDict): a dict of splits.
        names = list(dataset.keys())
        if split is None:
            if "train" in names or len(names) == 1:
                split = "train" if "train" in names else names[0]
            else:
                raise UserError(
                    f"the dataset has splits {', '.join(names)} and no 'train'; pick one with split=NAME (--split NAME)."
                )
        if split not in names:
            raise UserError(f"the dataset has no split {split!r}; its splits: {', '.join(names)}.")
        return dataset[split], split
    name = split or str(getattr(dataset, "split", None) or "train")
    return dataset, name


def _check_on_error(on_error):
    if on_error not in ON_ERROR_CHOICES:
        raise UserError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}.")


def _load(name, tables, report, answers="first", include_chatgpt=False, on_error="raise", progress=False,
          format=AUTO, columns=None):
    """Examples of `tables` (`(name, rows, column names or None)` each), counted in `report`."""
    _check_on_error(on_error)
    mapping = parse_columns(columns)

    def rows():
        for table, table_rows, column_names in tables:
            form, _, marked = with_forms(table_rows, table, format, mapping, column_names)
            if form is not None:
                report.formats[table] = form
            yield from ((row, form) for row in marked)

    examples, seen = [], set()
    for row, form in _progress(rows(), progress):
        # An empty file is reported (and skipped) like a bad row, but it is no row.
        report.rows_read += not (row.problem and row.problem[0] == EMPTY_FILE)
        try:
            if row.problem:
                raise RowError(*row.problem)
            conversations = to_conversations(row.value, form or "hc3", answers, include_chatgpt)
        except RowError as error:
            if on_error == "raise":
                raise DataError(row.source, error.kind, str(error)) from None
            report.skipped[error.kind] = report.skipped.get(error.kind, 0) + 1
            continue
        for messages in conversations:
            key = tuple((m["role"], m["content"]) for m in messages)
            if key in seen:
                report.duplicates_removed += 1
                continue
            seen.add(key)
            examples.append({"messages": messages, "source": row.source})
    report.examples = len(examples)
    if not examples:
        raise UserError(f"{name}: no usable examples ({report.to_dict()}).")
    return examples, report


def load_hub_examples(repo_id=HC3_REPO_ID, subset="baike", revision=None, **kwargs):
    """Download one subset's raw `{subset}.jsonl` from the Hub and load it.

    The repo's loading script is not run by current `datasets`, so the raw
    per-subset files are the reliable route; `huggingface_hub` caches them.

    Args:
        repo_id: str. A Hub dataset repository.
        subset: str. One of `HC3_SUBSETS`.
        revision: str or None. A branch, tag or commit to pin.
        **kwargs: passed to `load_examples` (answers, include_chatgpt, on_error, progress).

    Returns:
        `(examples, report)` as `load_examples`.
    """
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo_id, f"{subset}.jsonl", repo_type="dataset", revision=revision)
    return load_examples(path, subset=subset, **kwargs)


def parse_hub_spec(spec):
    """`(path, config, split)` of `"hub:OWNER/NAME[:CONFIG][@SPLIT]"` (missing parts None).

    The path may also be a local dataset repository folder.

    Example:
    >>> parse_hub_spec("hub:shibing624/alpaca-zh")
    ('shibing624/alpaca-zh', None, None)
    >>> parse_hub_spec("hub:BelleGroup/train_0.5M_CN:default@train")
    ('BelleGroup/train_0.5M_CN', 'default', 'train')
    """
    rest = str(spec)[len(DATASETS_PREFIX):] if str(spec).startswith(DATASETS_PREFIX) else str(spec)
    rest, at, split = rest.rpartition("@") if "@" in rest else (rest, "", "")
    path, _, config = rest.partition(":")
    if not path or (at and not split):
        raise UserError(f"{spec}: expected hub:OWNER/NAME[:CONFIG][@SPLIT], e.g. hub:shibing624/alpaca-zh@train.")
    return path, config or None, split or None


def load_hub_dataset(spec, split=None, revision=None):
    """`(dataset, split name)` of a `hub:` spec, read with `datasets.load_dataset` and cached where it caches.

    Parquet, JSON and CSV repositories load; a repository with only a loading
    script is explained (current `datasets` no longer runs scripts).
    `split` is used when the spec names none.
    """
    import datasets

    path, config, spec_split = parse_hub_spec(spec)
    split = spec_split or split
    try:
        loaded = datasets.load_dataset(path, config, split=split, revision=revision)
    except Exception as error:  # datasets raises many types; all are the user's to fix.
        message = " ".join(str(error).split())
        if "scripts are no longer supported" in message:
            raise UserError(
                f"{spec}: this dataset repository has only a loading script, which datasets "
                f"{datasets.__version__} no longer runs. Download its raw data files (parquet/json/jsonl) "
                "and pass the file or folder as data"
                f"{'; for HC3-Chinese use data=hub, which reads its raw per-subset files' if 'HC3' in path else ''}."
            ) from error
        if isinstance(error, (ImportError, MemoryError)):
            raise
        raise UserError(f"{spec}: datasets.load_dataset could not read it: {message}") from error
    return pick_split(loaded, split)


def load_source_examples(source, split=None, **kwargs):
    """Examples of a data source as `TrainConfig.data` names it.

    Args:
        source: str, path or dataset. "hub" (HC3-Chinese on the Hub),
            "hf://OWNER/NAME" (a Hub dataset laid out like HC3-Chinese),
            "hub:OWNER/NAME[:CONFIG][@SPLIT]" (any parquet/json dataset
            repository, through `datasets`), a local file/folder, or a
            `datasets.Dataset`/`DatasetDict`/list of row dicts.
        split: str or None. The split of a `DatasetDict` or `hub:` dataset
            (None: "train" or the only split).
        **kwargs: passed to `load_examples` (subset, answers, include_chatgpt,
            on_error, progress, format, columns).

    Returns:
        `(examples, report)` as `load_examples`.

    Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> _ = path.write_text('{"question": "问", "human_answers": ["答"]}', encoding="utf-8")
    >>> examples, report = load_source_examples(str(path))
    >>> examples[0]["messages"][1]["content"], report.examples
    ('答', 1)
    """
    if not isinstance(source, (str, os.PathLike)):
        kwargs.pop("subset", None)
        return load_dataset_examples(source, split=split, **kwargs)
    source = str(source)
    if source == HC3_SOURCE:
        return load_hub_examples(HC3_REPO_ID, **kwargs)
    if source.startswith(HUB_PREFIX):
        return load_hub_examples(source[len(HUB_PREFIX) :], **kwargs)
    if source.startswith(PYTHON_PREFIX):
        raise UserError(
            f"data {source!r} was a datasets.Dataset held in Python; pass it again, e.g. "
            "kg.load_run(run_dir, data=dataset) or kg.resume(run_dir, data=dataset)."
        )
    if source.startswith(DATASETS_PREFIX):
        kwargs.pop("subset", None)
        dataset, name = load_hub_dataset(source, split)
        return load_dataset_examples(dataset, split=name, **kwargs)
    return load_examples(source, **kwargs)


def _progress(rows, progress):
    if not progress:
        return rows
    from tqdm.auto import tqdm

    return tqdm(rows, desc="rows", unit=" rows", mininterval=1.0)
