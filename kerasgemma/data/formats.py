"""Row forms: which one a file holds, and how a row of each becomes chat conversations.

Five forms are read, each detected from its field names (in any order, with
any extra fields) or named with `--format`:

- "alpaca": `instruction`, optional `input`, `output`; optional `system` and
  `history` (`[[question, answer], ...]` earlier turns). alpaca-zh, BELLE.
  The user turn is the instruction, then the input on a new line.
- "sharegpt": `conversations: [{"from": "human"|"gpt"|"system", "value": ...}]`
  (`user`/`assistant` and `role`/`content` too), optional `system`.
- "prompt_completion": `prompt` and `completion`, both strings, or both lists
  of `{"role", "content"}` messages (TRL's conversational form).
- "messages": `{"messages": [{"role": ..., "content": ...}]}`.
- "hc3": `question`, `human_answers`, `chatgpt_answers` (HC3-Chinese).

A file holds one form: the first row whose fields name exactly one form
decides it, and a later row of another form is a `mixed_formats` problem
that names its line. `--columns NAME=COLUMN,...` renames a file's columns to
the names above first (`answer=COLUMN` names the model's answer: it becomes
`completion`, and `question` then becomes `prompt`).

Example:
>>> form_of({"output": "好。", "instruction": "问候", "id": 7})
'alpaca'
>>> to_conversations({"instruction": "翻译", "input": "hello", "output": "你好"}, "alpaca")
[[{'role': 'user', 'content': '翻译\\nhello'}, {'role': 'assistant', 'content': '你好'}]]
"""

from kerasgemma.data.rows import (
    ANSWER_CHOICES,
    BAD_MESSAGES,
    EMPTY_QUESTION,
    MISSING_QUESTION,
    NO_USABLE_ANSWER,
    NOT_AN_OBJECT,
    WRONG_TYPE,
    RowError,
    hc3_conversations,
    type_name,
    validate_messages,
)
from kerasgemma.errors import UserError

FORMS = ("alpaca", "sharegpt", "prompt_completion", "messages", "hc3")
AUTO = "auto"
FORMAT_CHOICES = (AUTO,) + FORMS
# Fields that mark a row as one form (any one of them is enough).
FORM_FIELDS = {
    "alpaca": ("instruction", "input", "output"),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "hc3": ("question", "human_answers", "chatgpt_answers"),
}
# Columns a table (Parquet file, `datasets.Dataset`) must have for its form.
REQUIRED_COLUMNS = {
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "hc3": ("question", "human_answers"),
}
DESCRIPTIONS = {
    "alpaca": "alpaca (instruction, input, output)",
    "sharegpt": "sharegpt (conversations of from/value turns)",
    "prompt_completion": "prompt_completion (prompt, completion)",
    "messages": "messages (a list of role/content messages)",
    "hc3": "hc3 (question, human_answers, chatgpt_answers)",
}
# Names `--columns` may map a file's column to.
FIELD_NAMES = tuple(sorted({name for names in FORM_FIELDS.values() for name in names} | {"system", "history"}))
ANSWER_ALIAS = "answer"

# Row problem kinds added by the forms (rows.py has the shared ones).
MIXED_FORMATS = "mixed_formats"
UNSUPPORTED_ROLE = "unsupported_role"

SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
}


def forms_help():
    """One line listing the forms, for error messages."""
    return "; ".join(DESCRIPTIONS[form] for form in FORMS)


def parse_columns(text):
    """`{our name: the file's column}` from `"NAME=COLUMN,NAME=COLUMN"` (None or "" -> {}).

    NAME is a field name of one of the forms (`FIELD_NAMES`), or `answer`
    for the model's answer (then read as prompt/completion). A pair written
    the other way round (`COLUMN=NAME`, when only the right side is a known
    name) is accepted too.

    Example:
    >>> parse_columns("instruction=query, output=response")
    {'instruction': 'query', 'output': 'response'}
    >>> sorted(parse_columns("question=prompt,answer=response").items())
    [('completion', 'response'), ('prompt', 'prompt')]
    >>> parse_columns("reply")
    Traceback (most recent call last):
    ...
    kerasgemma.errors.UserError: columns: 'reply' is not NAME=COLUMN; ...
    """
    if not text:
        return {}
    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            name, equals, column = (piece.strip() for piece in part.partition("="))
            if not equals or not name or not column:
                raise UserError(
                    f"columns: {part.strip()!r} is not NAME=COLUMN; write e.g. "
                    "'instruction=query,output=response' (NAME one of: "
                    f"{', '.join(FIELD_NAMES + (ANSWER_ALIAS,))})."
                )
            pairs.append((name, column))
    known = set(FIELD_NAMES) | {ANSWER_ALIAS}
    mapping = {}
    for name, column in pairs:
        if name not in known and column in known:
            name, column = column, name
        if name not in known:
            raise UserError(
                f"columns: {name!r} is not a field kerasgemma reads; NAME=COLUMN takes NAME from: "
                f"{', '.join(FIELD_NAMES + (ANSWER_ALIAS,))}."
            )
        if name in mapping:
            raise UserError(f"columns: {name!r} is mapped twice.")
        mapping[name] = column
    if ANSWER_ALIAS in mapping:  # A plain question/answer pair is a prompt/completion row.
        mapping["completion"] = mapping.pop(ANSWER_ALIAS)
        if "question" in mapping:
            mapping["prompt"] = mapping.pop("question")
    return mapping


def apply_columns(value, mapping):
    """`value` with each mapped column renamed to our name (a non-object is returned as is).

    Example:
    >>> apply_columns({"q": "问", "a": "答", "id": 1}, {"prompt": "q", "completion": "a"})
    {'id': 1, 'prompt': '问', 'completion': '答'}
    """
    if not mapping or not isinstance(value, dict):
        return value
    renamed = {key: item for key, item in value.items() if key not in mapping.values() and key not in mapping}
    for name, column in mapping.items():
        if column in value:
            renamed[name] = value[column]
    return renamed


def forms_of(value):
    """The forms whose fields `value` (a row object) has, null fields not counted."""
    return [form for form in FORMS if any(value.get(field) is not None for field in FORM_FIELDS[form])]


def form_of(value):
    """The one form a row object's fields name, or None when they name none or several."""
    forms = forms_of(value) if isinstance(value, dict) else []
    return forms[0] if len(forms) == 1 else None


def check_columns(name, form, columns, mapping=None):
    """Raise a `UserError` when a table (`columns`: its column names) lacks a column `form` needs.

    Without this a missing column shows up as an empty field on every row.

    Example:
    >>> check_columns("rows.parquet", "hc3", ["question", "answer"])
    Traceback (most recent call last):
    ...
    kerasgemma.errors.UserError: rows.parquet: missing column human_answers for the hc3 form (columns: question, answer); ...
    """
    mapping = mapping or {}
    present = {ours for ours, theirs in mapping.items() if theirs in columns}
    present |= {column for column in columns if column not in mapping.values()}
    missing = [column for column in REQUIRED_COLUMNS[form] if column not in present]
    if form == "hc3" and "chatgpt_answers" in present:
        missing = [column for column in missing if column != "human_answers"]
    if missing:
        raise UserError(
            f"{name}: missing column {', '.join(missing)} for the {form} form (columns: {', '.join(columns)}); "
            f"map yours with --columns {missing[0]}=COLUMN, or pick the form with --format "
            f"({forms_help()})."
        )


def with_forms(rows, name, format=AUTO, mapping=None, columns=None):
    """Decide the form of one file's rows; returns `(form, decided_by, rows)`.

    `rows` come back (renamed by `mapping`, a `parse_columns` result) with a
    `mixed_formats` problem set on each row of another form than the file's.
    `form` is None when no row could be read at all; `decided_by` is the
    source of the row that decided the form, or "--format". `columns`: the
    column names when the rows come from a table, checked for the form.

    Raises:
        UserError: when no row names a form, or every row names several.

    Example:
    >>> from kerasgemma.data.readers import Row
    >>> rows = [Row("a.jsonl:1", {"conversations": [], "id": 1}), Row("a.jsonl:2", {"prompt": "p"})]
    >>> form, decided_by, rows = with_forms(rows, "a.jsonl")
    >>> form, decided_by, [row.problem and row.problem[0] for row in rows]
    ('sharegpt', 'a.jsonl:1', [None, 'mixed_formats'])
    """
    if format not in FORMAT_CHOICES:
        raise UserError(f"format must be one of {FORMAT_CHOICES}, got {format!r}.")
    rows, buffer = iter(rows), []
    form, decided_by = (format, "--format") if format != AUTO else (None, None)
    unknown = ambiguous = None
    if form is None:
        for row in rows:
            _rename(row, mapping)
            buffer.append(row)
            if row.problem or not isinstance(row.value, dict):
                continue
            forms = forms_of(row.value)
            if len(forms) == 1:
                form, decided_by = forms[0], row.source
                break
            if not forms and unknown is None:
                unknown = row
            if len(forms) > 1 and ambiguous is None:
                ambiguous = (row, forms)
        else:
            if ambiguous:
                row, forms = ambiguous
                raise UserError(
                    f"{row.source}: the fields ({', '.join(row.value)}) fit several forms "
                    f"({', '.join(forms)}); pick one with --format, or rename columns with --columns."
                )
            if unknown:
                raise UserError(
                    f"{unknown.source}: cannot tell the row form from the fields "
                    f"({', '.join(map(str, unknown.value)) or 'none'}); kerasgemma reads: {forms_help()}. "
                    "Rename your columns with --columns NAME=COLUMN (e.g. instruction=query,output=response) "
                    "or pick the form with --format."
                )
    if form is not None and columns is not None:
        check_columns(name, form, list(columns), mapping)

    def marked():
        for row in buffer:
            yield _mark(row, form, decided_by)
        for row in rows:
            yield _mark(_rename(row, mapping), form, decided_by)

    return form, decided_by, marked()


def _rename(row, mapping):
    if row.problem is None and mapping:
        row.value = apply_columns(row.value, mapping)
    return row


def _mark(row, form, decided_by):
    if row.problem is None and isinstance(row.value, dict) and form is not None:
        forms = forms_of(row.value)
        if forms and form not in forms:
            where = f"--format is {form}" if decided_by == "--format" else f"the file is {form} (from {decided_by})"
            row.problem = (
                MIXED_FORMATS,
                f"this row is {' or '.join(forms)} but {where}; a file holds one row form "
                "(split it, or convert the rows)",
            )
    return row


def to_conversations(row, form, answers="first", include_chatgpt=False):
    """The conversations (lists of messages) that one row of `form` yields.

    `answers` and `include_chatgpt` apply to HC3 rows (see `rows.row_to_conversations`).

    Raises:
        RowError: when the row is unusable; `kind` says why.

    Example:
    >>> to_conversations({"conversations": [{"from": "human", "value": "你好"},
    ...     {"from": "gpt", "value": "你好！"}], "system": "简洁。"}, "sharegpt")[0][0]
    {'role': 'system', 'content': '简洁。'}
    >>> to_conversations({"prompt": "1+1=", "completion": " 2"}, "prompt_completion")
    [[{'role': 'user', 'content': '1+1='}, {'role': 'assistant', 'content': '2'}]]
    """
    if answers not in ANSWER_CHOICES:
        raise ValueError(f"answers must be one of {ANSWER_CHOICES}, got {answers!r}.")
    if not isinstance(row, dict):
        raise RowError(NOT_AN_OBJECT, f"expected a JSON object, got {type_name(row)}")
    if form == "hc3":
        return hc3_conversations(row, answers, include_chatgpt)
    if form == "messages":
        if row.get("messages") is None:
            raise RowError(BAD_MESSAGES, f"no 'messages' field (fields: {', '.join(row) or 'none'})")
        return [validate_messages(row["messages"])]
    return [CONVERTERS[form](row)]


def _alpaca(row):
    instruction = _required_text(row, "instruction")
    extra = _optional_text(row, "input")
    output = _required_text(row, "output", missing=NO_USABLE_ANSWER, empty=NO_USABLE_ANSWER)
    system = _optional_text(row, "system")
    messages = [{"role": "system", "content": system}] if system else []
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError(WRONG_TYPE, f"'history' must be a list of [question, answer] pairs, got {type_name(history)}")
    for index, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError(WRONG_TYPE, f"'history'[{index}] must be a [question, answer] pair, got {type_name(pair)}")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = instruction + ("\n" + extra.strip() if extra.strip() else "")
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return validate_messages(messages)


def _sharegpt(row):
    turns = row.get("conversations")
    if turns is None:
        raise RowError(BAD_MESSAGES, f"no 'conversations' field (fields: {', '.join(row)})")
    if not isinstance(turns, list):
        raise RowError(WRONG_TYPE, f"'conversations' must be a list, got {type_name(turns)}")
    system = _optional_text(row, "system")
    messages, labels = [], []
    if system.strip():
        messages.append({"role": "system", "content": system})
        labels.append("'system'")
    for index, turn in enumerate(turns):
        where = f"conversations[{index}]"
        if not isinstance(turn, dict):
            raise RowError(WRONG_TYPE, f"{where} must be an object, got {type_name(turn)}")
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in SHAREGPT_ROLES:
            if isinstance(role, str) and role:
                raise RowError(
                    UNSUPPORTED_ROLE,
                    f"{where} is from {role!r}; kerasgemma trains on human/user, gpt/assistant and "
                    "system turns only",
                )
            raise RowError(BAD_MESSAGES, f"{where} has no 'from' (human, gpt or system)")
        if SHAREGPT_ROLES[role] == "system" and messages:
            raise RowError(BAD_MESSAGES, f"{where} is a system turn after the start of the conversation")
        messages.append({"role": SHAREGPT_ROLES[role], "content": content})
        labels.append(where)
    return validate_messages(messages, labels=labels)


def _prompt_completion(row):
    prompt, completion = row.get("prompt"), row.get("completion")
    if prompt is None:
        raise RowError(MISSING_QUESTION, f"no 'prompt' field (fields: {', '.join(row)})")
    if isinstance(prompt, str):
        prompt = _required_text(row, "prompt")
        completion = _required_text(
            row, "completion", missing=NO_USABLE_ANSWER, empty=NO_USABLE_ANSWER, like="'prompt'"
        )
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if not isinstance(prompt, list):
        raise RowError(WRONG_TYPE, f"'prompt' must be a string or a list of messages, got {type_name(prompt)}")
    if not completion:
        raise RowError(NO_USABLE_ANSWER, "no 'completion' messages")
    if not isinstance(completion, list):
        raise RowError(WRONG_TYPE, f"'completion' must be a list of messages like 'prompt', got {type_name(completion)}")
    labels = [f"prompt[{i}]" for i in range(len(prompt))] + [f"completion[{i}]" for i in range(len(completion))]
    for index, message in enumerate(completion):
        if isinstance(message, dict) and message.get("role") != "assistant":
            raise RowError(BAD_MESSAGES, f"completion[{index}] has role {message.get('role')!r}; expected 'assistant'")
    return validate_messages(prompt + completion, labels=labels)


def _required_text(row, field, missing=MISSING_QUESTION, empty=EMPTY_QUESTION, like=None):
    """`row[field]`, stripped, or the RowError (kinds `missing`/`empty`) that says why not."""
    value = row.get(field)
    if value is None:
        raise RowError(missing, f"no {field!r} field (fields: {', '.join(row)})")
    if not isinstance(value, str):
        kind = f"a string like {like}" if like else "a string"
        raise RowError(WRONG_TYPE, f"{field!r} must be {kind}, got {type_name(value)}")
    if not value.strip():
        raise RowError(empty, f"{field!r} is empty or whitespace-only")
    return value.strip()


def _optional_text(row, field):
    value = row.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(WRONG_TYPE, f"{field!r} must be a string, got {type_name(value)}")
    return value


CONVERTERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "prompt_completion": _prompt_completion}
