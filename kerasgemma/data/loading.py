"""Load HC3-style or chat-style rows from a file, a folder or the Hub into examples.

An example is a plain dict:
`{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}],
"source": "baike.jsonl:12"}`. Loading also returns a `LoadReport` with rows
read, examples kept, rows skipped by reason and duplicates removed.
"""

import os

from kerasgemma.errors import UserError
from kerasgemma.data.readers import EMPTY_FILE, UNSUPPORTED_FILE, list_data_files, read_rows, unsupported_files
from kerasgemma.data.report import LoadReport
from kerasgemma.data.rows import RowError, row_to_conversations

HC3_REPO_ID = "Hello-SimpleAI/HC3-Chinese"
# `data` values that mean the Hub: "hub" (HC3-Chinese itself) or "hf://OWNER/NAME".
HC3_SOURCE = "hub"
HUB_PREFIX = "hf://"
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
):
    """Read, validate and deduplicate the examples of a file or folder.

    Args:
        path: str or path. A `.jsonl`, `.json` or `.parquet` file, or a
            folder of them (a folder holding `{subset}.jsonl` reads only that).
        subset: str. HC3 subset to pick inside a folder: one of `HC3_SUBSETS`.
        answers: str. "first" answer per question, or "all" answers.
        include_chatgpt: bool. Also train on `chatgpt_answers`.
        on_error: str. "raise" stops at the first bad row with a `DataError`
            naming file, line and problem; "skip" skips it and counts it.
        progress: bool. Show a tqdm progress bar over rows.

    Returns:
        `(examples, report)`: a list of example dicts and a `LoadReport`.

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
    """
    if on_error not in ON_ERROR_CHOICES:
        raise UserError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}.")
    if subset not in HC3_SUBSETS:
        raise UserError(f"subset must be one of {HC3_SUBSETS}, got {subset!r}.")
    report = LoadReport(files=list_data_files(path, subset=subset))
    ignored = unsupported_files(path, subset=subset)
    if ignored and on_error == "raise":
        raise UserError(
            f"{os.fspath(path)}: unsupported file(s) {', '.join(map(os.path.basename, ignored[:5]))}"
            f"{' …' if len(ignored) > 5 else ''} beside the data; convert them to .jsonl/.json/.parquet, "
            "move them out, or pass --on-error skip to leave them out."
        )
    if ignored:
        report.skipped[UNSUPPORTED_FILE] = len(ignored)
    examples, seen = [], set()
    for row in _rows(report.files, progress):
        # An empty file is reported (and skipped) like a bad row, but it is no row.
        report.rows_read += not (row.problem and row.problem[0] == EMPTY_FILE)
        try:
            if row.problem:
                raise RowError(*row.problem)
            conversations = row_to_conversations(row.value, answers, include_chatgpt)
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
        raise UserError(f"{os.fspath(path)}: no usable examples ({report.to_dict()}).")
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


def load_source_examples(source, **kwargs):
    """Examples of a data source as `TrainConfig.data` names it.

    Args:
        source: str or path. "hub" (HC3-Chinese on the Hub), "hf://OWNER/NAME"
            (a Hub dataset laid out like HC3-Chinese), or a local file/folder.
        **kwargs: passed to `load_examples` (subset, answers, include_chatgpt,
            on_error, progress).

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
    source = str(source)
    if source == HC3_SOURCE:
        return load_hub_examples(HC3_REPO_ID, **kwargs)
    if source.startswith(HUB_PREFIX):
        return load_hub_examples(source[len(HUB_PREFIX) :], **kwargs)
    return load_examples(source, **kwargs)


def _rows(files, progress):
    rows = (row for filename in files for row in read_rows(filename))
    if not progress:
        return rows
    from tqdm.auto import tqdm

    return tqdm(rows, desc="rows", unit=" rows", mininterval=1.0)
