"""Render a conversation as training text and mark which characters the model learns.

Templates:

- "gemma" (default): the model's own chat format, chosen from its tokenizer
  (`kerasgemma.data.tokenize.resolve_template`): Gemma 1–3's, or Gemma 4's
  where the tokenizer has Gemma 4's turn markers. Never hard-coded per run.
- "gemma3" is Gemma 1–3's format, character for character what
  `GEMMA_CHAT_TEMPLATE` renders, minus the leading BOS (added as an id by
  `kerasgemma.data.tokenize`):
  `<start_of_turn>user\\n{question}<end_of_turn>\\n<start_of_turn>model\\n{answer}<end_of_turn>\\n`.
  Gemma 1–3 have no system role; a system message is prepended to the first
  user turn followed by a blank line. ("gemma" means this one when no
  tokenizer says otherwise.)
- "gemma4": Gemma 4's format, what `GEMMA4_CHAT_TEMPLATE` renders with
  thinking off (the default): `<|turn>user\\n{question}<turn|>\\n<|turn>model\\n{answer}<turn|>\\n`;
  a system message is its own `<|turn>system` turn.
- "plain": the reference notebook's prompt, a fixed instruction followed by
  `问题：{question}` and `答案：{answer}`; it has no end marker in text, so the
  tokenizer appends EOS, which the model learns to emit.

`loss_spans` are the character ranges of the model's turns: each answer plus
its end-of-turn marker (`<end_of_turn>`, Gemma 4's `<turn|>`; not the newline
after it, which the model never has to generate: generation stops at the
marker).
"""

import dataclasses

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
PLAIN_INSTRUCTION = "请回答下面的问题。"
_GEMMA_ROLES = {"user": "user", "assistant": "model", "system": "system"}


@dataclasses.dataclass(frozen=True)
class TurnFormat:
    """How one Gemma family writes a turn.

    Args:
        start: str. Marker opening a turn, followed by the role and "\\n".
        end: str. Marker closing a turn (learned, and the stop token).
        system_turn: bool. A system message is a turn of its own (Gemma 4),
            else it is prepended to the first user turn (Gemma 1–3).
    """

    start: str
    end: str
    system_turn: bool


# One row per chat family; "gemma" is resolved to a row from the tokenizer.
TURN_FORMATS = {
    "gemma3": TurnFormat(START_OF_TURN, END_OF_TURN, system_turn=False),
    "gemma4": TurnFormat("<|turn>", "<turn|>", system_turn=True),
}
TEMPLATES = ("gemma",) + tuple(TURN_FORMATS) + ("plain",)


def end_of_turn(template):
    """The end-of-turn marker of a template (None for "plain").

    Example:
    >>> end_of_turn("gemma4"), end_of_turn("gemma")
    ('<turn|>', '<end_of_turn>')
    """
    if template == "plain":
        return None
    return TURN_FORMATS["gemma3" if template == "gemma" else template].end


@dataclasses.dataclass
class ChatText:
    """A formatted conversation.

    Args:
        text: str. The conversation text, without BOS.
        loss_spans: list of (start, end) character ranges the model learns.
        append_eos: bool. Whether EOS follows the text as a learned token.
    """

    text: str
    loss_spans: list
    append_eos: bool = False


def format_chat(messages, template="gemma", add_generation_prompt=False):
    """Format messages as training (or prompt) text with its loss spans.

    Args:
        messages: list of `{"role", "content"}` dicts: an optional `system`
            message, then `user`/`assistant` alternating from `user`.
        template: str. One of `TEMPLATES`; "gemma" here is Gemma 1–3's
            format (resolve it from the tokenizer first:
            `kerasgemma.data.tokenize.resolve_template`).
        add_generation_prompt: bool. End with the opening of a model turn.

    Returns:
        A `ChatText`.

    Example:
    >>> chat = format_chat([{"role": "user", "content": "你好"},
    ...                     {"role": "assistant", "content": "你好！"}])
    >>> print(chat.text, end="")
    <start_of_turn>user
    你好<end_of_turn>
    <start_of_turn>model
    你好！<end_of_turn>
    >>> [chat.text[start:end] for start, end in chat.loss_spans]
    ['你好！<end_of_turn>']
    """
    system, turns = _split_system(messages)
    if template == "gemma":
        template = "gemma3"
    if template in TURN_FORMATS:
        return _format_turns(TURN_FORMATS[template], system, turns, add_generation_prompt)
    if template == "plain":
        return _format_plain(system, turns, add_generation_prompt)
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}.")


def generation_prompt(messages, template="gemma"):
    """The text that asks the model for its next turn, without BOS.

    Args:
        messages: list of messages ending with a `user` turn (an optional
            `system` message first).
        template: str. One of `TEMPLATES`.

    Example:
    >>> generation_prompt([{"role": "user", "content": "1+1=?"}], template="gemma4")
    '<|turn>user\\n1+1=?<turn|>\\n<|turn>model\\n'
    >>> generation_prompt([{"role": "system", "content": "用中文回答。"},
    ...                    {"role": "user", "content": "1+1=?"}])
    '<start_of_turn>user\\n用中文回答。\\n\\n1+1=?<end_of_turn>\\n<start_of_turn>model\\n'
    >>> generation_prompt([{"role": "user", "content": "1+1=?"}], template="plain")
    '请回答下面的问题。\\n问题：1+1=?\\n答案：'
    """
    return format_chat(messages, template, add_generation_prompt=True).text


def _split_system(messages):
    if messages and messages[0]["role"] == "system":
        system, turns = messages[0]["content"], messages[1:]
    else:
        system, turns = None, messages
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(
                "Conversation roles must be an optional system message, then "
                f"user/assistant alternating; turn {index + 1} is {message['role']!r}."
            )
    return system, turns


def _format_turns(form, system, turns, add_generation_prompt):
    if system is not None and form.system_turn:
        # Gemma 4's template trims the system text like every other turn.
        turns = [{"role": "system", "content": system}] + list(turns)
        system = None
    parts, spans, length = [], [], 0
    for index, message in enumerate(turns):
        head = f"{form.start}{_GEMMA_ROLES[message['role']]}\n"
        if index == 0 and system is not None:
            head += system + "\n\n"  # Not stripped: the template does not trim it.
        # `.strip()` is what the template's `| trim` filter does.
        body = message["content"].strip() + form.end
        if message["role"] == "assistant":
            spans.append((length + len(head), length + len(head) + len(body)))
        parts += [head, body, "\n"]
        length += len(head) + len(body) + 1
    if add_generation_prompt:
        parts.append(f"{form.start}model\n")
    return ChatText("".join(parts), spans)


def _format_plain(system, turns, add_generation_prompt):
    parts = [PLAIN_INSTRUCTION if system is None else system.strip()]
    spans, length = [], len(parts[0])
    for message in turns:
        if message["role"] == "user":
            part = f"\n问题：{message['content'].strip()}\n答案："
        else:
            part = message["content"].strip()
            spans.append((length, length + len(part)))
        parts.append(part)
        length += len(part)
    if add_generation_prompt:
        return ChatText("".join(parts), spans)
    return ChatText("".join(parts), spans, append_eos=True)
