"""Render a conversation as training text and mark which characters the model learns.

Two templates:

- "gemma" (default): Gemma's chat format, character for character what
  `GEMMA_CHAT_TEMPLATE` renders, minus the leading BOS (added as an id by
  `kerasgemma.data.tokenize`):
  `<start_of_turn>user\\n{question}<end_of_turn>\\n<start_of_turn>model\\n{answer}<end_of_turn>\\n`.
  Gemma has no system role; a system message is prepended to the first user
  turn followed by a blank line.
- "plain": the reference notebook's prompt, a fixed instruction followed by
  `问题：{question}` and `答案：{answer}`; it has no end marker in text, so the
  tokenizer appends EOS, which the model learns to emit.

`loss_spans` are the character ranges of the model's turns: each answer plus
its `<end_of_turn>` (not the newline after it, which the model never has to
generate: generation stops at `<end_of_turn>`).
"""

import dataclasses

TEMPLATES = ("gemma", "plain")
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
PLAIN_INSTRUCTION = "请回答下面的问题。"
_GEMMA_ROLES = {"user": "user", "assistant": "model"}


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
        template: str. "gemma" or "plain".
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
        return _format_gemma(system, turns, add_generation_prompt)
    if template == "plain":
        return _format_plain(system, turns, add_generation_prompt)
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}.")


def generation_prompt(messages, template="gemma"):
    """The text that asks the model for its next turn, without BOS.

    Args:
        messages: list of messages ending with a `user` turn (an optional
            `system` message first).
        template: str. "gemma" or "plain".

    Example:
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


def _format_gemma(system, turns, add_generation_prompt):
    parts, spans, length = [], [], 0
    for index, message in enumerate(turns):
        head = f"{START_OF_TURN}{_GEMMA_ROLES[message['role']]}\n"
        if index == 0 and system is not None:
            head += system + "\n\n"  # Not stripped: the template does not trim it.
        # `.strip()` is what the template's `| trim` filter does.
        body = message["content"].strip() + END_OF_TURN
        if message["role"] == "assistant":
            spans.append((length + len(head), length + len(head) + len(body)))
        parts += [head, body, "\n"]
        length += len(head) + len(body) + 1
    if add_generation_prompt:
        parts.append(f"{START_OF_TURN}model\n")
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
