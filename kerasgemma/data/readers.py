"""Read rows from `.jsonl`, `.json`, `.csv` and `.parquet` files, keeping where each came from.

Every row comes back as a `Row`: the decoded value and a `source` such as
`"baike.jsonl:12"` (file name and 1-based line; `"x.parquet:row 3"` for
Parquet). A row that cannot be decoded comes back with a `problem` instead of
a value, so that the caller decides whether to raise or to skip and count it
(`kerasgemma.data.loading`). Blank lines are ignored.
"""

import dataclasses
import json
import os

from kerasgemma.errors import MissingFileError, UserError

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Files a data folder commonly holds beside its data (a dataset repo's card
# and loading script); anything else unsupported is named, not ignored.
NOT_DATA_SUFFIXES = (".md", ".py", ".lock")
UNSUPPORTED_FILE = "unsupported_file"

# Problem kinds a reader can report (the loader adds the row-level ones).
INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
EMPTY_FILE = "empty_file"


@dataclasses.dataclass
class Row:
    """One row of a data file.

    Args:
        source: str. `"FILE:LINE"` (or `"FILE:row N"` for Parquet).
        value: the decoded JSON value, or None when `problem` is set.
        problem: None, or a `(kind, message)` tuple saying why the row is bad.
    """

    source: str
    value: object = None
    problem: tuple = None


def list_data_files(path, subset=None):
    """The data files under `path`, in a stable order.

    A file is returned as is. In a folder, `{subset}.jsonl|.json|.parquet` is
    used alone when it exists (the HC3 layout: `baike.jsonl`, `finance.jsonl`,
    ..., `all.jsonl`, where loading every file would count rows twice);
    otherwise every supported file in the folder and its sub-folders.

    Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["baike.jsonl", "law.jsonl"]:
    ...     _ = (folder / name).write_text("{}\\n")
    >>> [os.path.basename(f) for f in list_data_files(folder, subset="law")]
    ['law.jsonl']
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"{path}: no such file or folder.")
    if os.path.isfile(path):
        if not path.endswith(SUPPORTED_SUFFIXES):
            raise UserError(
                f"{path}: unsupported file type; expected one of {SUPPORTED_SUFFIXES}."
            )
        return [path]
    if subset:
        for suffix in SUPPORTED_SUFFIXES:
            candidate = os.path.join(path, subset + suffix)
            if os.path.isfile(candidate):
                return [candidate]
    files = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(path)
        for name in names
        if name.endswith(SUPPORTED_SUFFIXES)
    )
    if not files:
        raise MissingFileError(
            f"{path}: no {'/'.join(SUPPORTED_SUFFIXES)} files in this folder."
        )
    return files


def unsupported_files(path, subset=None):
    """Files in the folder `path` that `list_data_files` would silently leave out.

    Hidden files, documentation and scripts (`NOT_DATA_SUFFIXES`) are not
    counted; nor is anything when the folder has a `{subset}` file, which is
    then read alone on purpose.

    Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["a.jsonl", "b.txt", "README.md", ".DS_Store"]:
    ...     _ = (folder / name).write_text("{}\\n")
    >>> [os.path.basename(f) for f in unsupported_files(folder)]
    ['b.txt']
    """
    path = os.fspath(path)
    if not os.path.isdir(path) or (subset and any(
            os.path.isfile(os.path.join(path, subset + suffix)) for suffix in SUPPORTED_SUFFIXES)):
        return []
    return sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(path)
        for name in names
        if not name.endswith(SUPPORTED_SUFFIXES + NOT_DATA_SUFFIXES) and not name.startswith(".")
    )


def read_rows(filename):
    """Yield every `Row` of one file (`.jsonl`, `.json` or `.parquet`).

    An empty file (or one with only blank lines) yields a single `Row` with
    the `"empty_file"` problem.

    Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> _ = path.write_text('{"question": "q"}\\n\\n{oops\\n')
    >>> for row in read_rows(path):
    ...     print(row.source.split("/")[-1], row.value, row.problem and row.problem[0])
    rows.jsonl:1 {'question': 'q'} None
    rows.jsonl:3 None invalid_json
    """
    filename = os.fspath(filename)
    if filename.endswith(".parquet"):
        rows = _read_parquet(filename)
    elif filename.endswith(".csv"):
        rows = _read_csv(filename)
    elif filename.endswith(".json"):
        rows = _read_json(filename)
    else:
        rows = _read_jsonl(filename)
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty:
        yield Row(filename, problem=(EMPTY_FILE, "the file holds no rows"))


def _read_jsonl(filename):
    with open(filename, "rb") as file:
        for number, line in enumerate(file, start=1):
            yield from _decode_line(filename, number, line)


def _decode_line(filename, number, line):
    source = f"{filename}:{number}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        yield Row(source, problem=_utf8_problem(error))
        return
    if number == 1:
        text = text.removeprefix("\ufeff")  # A UTF-8 byte-order mark.
    if not text.strip():
        return
    try:
        yield Row(source, value=json.loads(text))
    except json.JSONDecodeError as error:
        yield Row(source, problem=_json_problem(error))


def _read_json(filename):
    """A JSON array of rows (or one object); JSON Lines under a .json name too."""
    with open(filename, "rb") as file:
        data = file.read()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        yield Row(f"{filename}:{line}", problem=_utf8_problem(error))
        return
    if not text.lstrip().startswith("["):
        try:  # One (possibly pretty-printed) object.
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if value is not None:
            start = len(text) - len(text.lstrip())
            yield Row(f"{filename}:{_line_of(text, start)}", value=value)
            return
        # Many "JSON" data files are JSON Lines.
        for number, line in enumerate(data.split(b"\n"), start=1):
            yield from _decode_line(filename, number, line)
        return
    # Walk the array element by element so each row keeps its line number.
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    while True:
        position = _skip_space(text, position)
        if position < len(text) and text[position] == "]":
            return
        line = _line_of(text, position)
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            source = f"{filename}:{error.lineno}"
            yield Row(source, problem=_json_problem(error))
            return  # The rest of the array cannot be located reliably.
        yield Row(f"{filename}:{line}", value=value)
        position = _skip_space(text, position)
        if position < len(text) and text[position] == ",":
            position += 1
        elif position >= len(text) or text[position] != "]":
            problem = (INVALID_JSON, "invalid JSON: expected ',' or ']' after an array item")
            yield Row(f"{filename}:{_line_of(text, position)}", problem=problem)
            return


def _json_problem(error):
    return (INVALID_JSON, f"invalid JSON: {error.msg} (column {error.colno})")


def _utf8_problem(error):
    return (INVALID_UTF8, f"invalid UTF-8 at byte {error.start}")


def _line_of(text, position):
    return text.count("\n", 0, position) + 1


def _skip_space(text, position):
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def table_columns(filename):
    """The column names of a Parquet or CSV file (checked against the row form it holds), else None.

    Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.csv"
    >>> _ = path.write_text("instruction,output\\n问,答\\n", encoding="utf-8")
    >>> table_columns(path), [row.value for row in read_rows(path)]
    (['instruction', 'output'], [{'instruction': '问', 'output': '答'}])
    """
    filename = os.fspath(filename)
    if filename.endswith(".parquet"):
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(filename).schema_arrow.names)
    if filename.endswith(".csv"):
        import csv

        try:
            with open(filename, encoding="utf-8-sig", newline="") as file:
                return next(csv.reader(file), [])
        except UnicodeDecodeError:
            return None  # Reported with its line when the rows are read.
    return None


def _read_csv(filename):
    """Rows of a CSV file with a header line; each row's source is the line it starts on."""
    import csv

    with open(filename, encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file)
        line = 1
        try:
            for value in reader:
                source = f"{filename}:{line + 1}"
                line = reader.line_num
                yield Row(source, value={key: item for key, item in value.items() if key is not None})
        except UnicodeDecodeError as error:
            yield Row(f"{filename}:{line + 1}", problem=_utf8_problem(error))
        except csv.Error as error:
            yield Row(f"{filename}:{reader.line_num}", problem=(INVALID_JSON, f"invalid CSV: {error}"))


def _read_parquet(filename):
    import pyarrow.parquet as pq

    table = pq.ParquetFile(filename)
    number = 0
    for batch in table.iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            number += 1
            yield Row(f"{filename}:row {number}", value=value)
