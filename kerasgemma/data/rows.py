"""Turn one decoded row into chat conversations, or say exactly what is wrong with it.

The HC3 form and the chat `messages` form live here, with the problem kinds
every form shares; `kerasgemma.data.formats` adds Alpaca, ShareGPT and
prompt/completion rows and decides which form a file holds.

- HC3 (`Hello-SimpleAI/HC3-Chinese`): `question` (str), `human_answers`
  (list of str), `chatgpt_answers` (list of str), optional `id`. Each chosen
  answer becomes one user/assistant conversation.
- Chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": str}]}`,
  for people who bring their own data.

Every check here exists so that a bad row fails now, with its file and line,
rather than later inside a training step.
"""

ROLES = ("system", "user", "assistant")
ANSWER_CHOICES = ("first", "all")

# Row-level problem kinds (the readers report invalid_json/invalid_utf8/empty_file).
NOT_AN_OBJECT = "not_an_object"
MISSING_QUESTION = "missing_question"
EMPTY_QUESTION = "empty_question"
WRONG_TYPE = "wrong_type"
NO_USABLE_ANSWER = "no_usable_answer"
BAD_MESSAGES = "bad_messages"


class RowError(ValueError):
    """A row that cannot become a training example.

    Args:
        kind: str. A short problem kind used to count skips, e.g. "wrong_type".
        message: str. What is wrong, for people.
    """

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def row_to_conversations(row, answers="first", include_chatgpt=False, form=None):
    """The conversations (lists of messages) that one row yields.

    Args:
        row: the decoded JSON value of one row.
        form: str or None. The row form (`kerasgemma.data.formats.FORMS`);
            None reads the form from the row's own fields (`messages` rows
            as chat, rows of no single form as HC3).
        answers: str. "first" (one example per question, the reference
            recipe) or "all" (every answer its own example).
        include_chatgpt: bool. Also use `chatgpt_answers` (HC3 rows only).

    Raises:
        RowError: when the row is unusable; `kind` says why.

    Example:
    >>> row = {"question": "天空为什么是蓝的？", "human_answers": ["瑞利散射。"]}
    >>> (conversation,) = row_to_conversations(row)
    >>> conversation[1]
    {'role': 'assistant', 'content': '瑞利散射。'}
    """
    from kerasgemma.data.formats import form_of, to_conversations

    if form is None and isinstance(row, dict):
        form = "messages" if "messages" in row else (form_of(row) or "hc3")
    return to_conversations(row, form or "hc3", answers, include_chatgpt)


def hc3_conversations(row, answers="first", include_chatgpt=False):
    """The conversations of one HC3 row object (see `row_to_conversations`)."""
    question = _question(row)
    fields = ["human_answers"] + (["chatgpt_answers"] if include_chatgpt else [])
    texts = [text for field in fields for text in _answers(row, field)]
    if not texts:
        raise RowError(
            NO_USABLE_ANSWER,
            f"no non-empty answer in {' or '.join(fields)}",
        )
    if answers == "first":
        texts = texts[:1]
    return [
        [{"role": "user", "content": question}, {"role": "assistant", "content": text}]
        for text in texts
    ]


def validate_messages(messages, labels=None):
    """Check a chat in the `messages` form and return it with stripped text.

    Rules: an optional first `system` message, then `user` and `assistant`
    strictly alternating, starting with `user` and ending with `assistant`
    (the turn the model learns from); every content a non-blank string.
    `labels`: what to call each message in errors (default `messages[i]`),
    for forms whose messages come from other fields.

    Example:
    >>> validate_messages([{"role": "user", "content": "hi "},
    ...                    {"role": "assistant", "content": "hello"}])
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]
    >>> validate_messages([{"role": "user", "content": "hi"}])
    Traceback (most recent call last):
    ...
    kerasgemma.data.rows.RowError: messages must end with an assistant turn
    """
    if not isinstance(messages, list):
        raise RowError(WRONG_TYPE, f"'messages' must be a list, got {type_name(messages)}")
    cleaned = []
    for index, message in enumerate(messages):
        where = labels[index] if labels else f"messages[{index}]"
        if not isinstance(message, dict):
            raise RowError(WRONG_TYPE, f"{where} must be an object, got {type_name(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowError(BAD_MESSAGES, f"{where} has role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise RowError(
                WRONG_TYPE, f"{where}.content must be a string, got {type_name(content)}"
            )
        if not content.strip():
            raise RowError(BAD_MESSAGES, f"{where}.content is empty or whitespace-only")
        cleaned.append({"role": role, "content": content.strip()})
    turns = cleaned[1:] if cleaned and cleaned[0]["role"] == "system" else cleaned
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise RowError(
                BAD_MESSAGES,
                f"roles must be an optional system message, then user/assistant alternating; "
                f"turn {index + 1} is {message['role']!r}, expected {expected!r}",
            )
    if not turns or turns[-1]["role"] != "assistant":
        raise RowError(BAD_MESSAGES, "messages must end with an assistant turn")
    return cleaned


def _question(row):
    if "question" not in row:
        raise RowError(MISSING_QUESTION, "no 'question' field (and no 'messages')")
    question = row["question"]
    if not isinstance(question, str):
        raise RowError(WRONG_TYPE, f"'question' must be a string, got {type_name(question)}")
    if not question.strip():
        raise RowError(EMPTY_QUESTION, "'question' is empty or whitespace-only")
    return question.strip()


def _answers(row, field):
    """The non-blank answers of one field; whitespace-only ones are not answers."""
    values = row.get(field)
    if values is None:
        return []
    if not isinstance(values, list):
        raise RowError(WRONG_TYPE, f"'{field}' must be a list of strings, got {type_name(values)}")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise RowError(
                WRONG_TYPE, f"'{field}'[{index}] must be a string, got {type_name(value)}"
            )
    return [value.strip() for value in values if value.strip()]


def type_name(value):
    """How a JSON value's type is named in error messages ("a list", "null", ...)."""
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
