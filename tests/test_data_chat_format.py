"""Chat text, the official Jinja template, token ids and the loss mask, checked exactly."""

import numpy as np
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from kerasgemma.data import (
    GEMMA_CHAT_TEMPLATE,
    format_chat,
    generation_prompt,
    sentencepiece_processor,
    tokenize_examples,
)
from kerasgemma.tiny import build_tiny_tokenizer_proto

SINGLE = [{"role": "user", "content": "什么是熊猫？"}, {"role": "assistant", "content": "熊猫是一种熊。"}]
MULTI = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "  天空为什么是蓝色的？ 😀\n"},
    {"role": "assistant", "content": "因为  瑞利散射。\n第二行 123 "},
    {"role": "user", "content": "再说一遍"},
    {"role": "assistant", "content": "好的：<b>瑞利</b>\t散射。"},
]
CONVERSATIONS = [SINGLE, MULTI, MULTI[1:], MULTI[:2], [MULTI[0]] + SINGLE]


@pytest.fixture(scope="module")
def proto():
    return build_tiny_tokenizer_proto([m["content"] for m in MULTI + SINGLE])


def test_gemma_text_exactly():
    assert format_chat(MULTI).text == (
        "<start_of_turn>user\n你是一个乐于助人的助手。\n\n天空为什么是蓝色的？ 😀<end_of_turn>\n"
        "<start_of_turn>model\n因为  瑞利散射。\n第二行 123<end_of_turn>\n"
        "<start_of_turn>user\n再说一遍<end_of_turn>\n"
        "<start_of_turn>model\n好的：<b>瑞利</b>\t散射。<end_of_turn>\n"
    )


def test_loss_spans_are_the_model_turns():
    chat = format_chat(MULTI)
    assert [chat.text[a:b] for a, b in chat.loss_spans] == [
        "因为  瑞利散射。\n第二行 123<end_of_turn>",
        "好的：<b>瑞利</b>\t散射。<end_of_turn>",
    ]


def test_plain_template_exactly():
    chat = format_chat(SINGLE, template="plain")
    assert chat.text == "请回答下面的问题。\n问题：什么是熊猫？\n答案：熊猫是一种熊。"
    assert chat.append_eos
    assert [chat.text[a:b] for a, b in chat.loss_spans] == ["熊猫是一种熊。"]
    system = format_chat([{"role": "system", "content": "简短回答。"}] + SINGLE, template="plain")
    assert system.text.startswith("简短回答。\n问题：")


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_matches_official_jinja_template(conversation, add_generation_prompt):
    if add_generation_prompt:
        conversation = conversation[:-1]  # Ask for the last model turn.
    (rendered,), _ = render_jinja_template(
        [conversation],
        chat_template=GEMMA_CHAT_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
        bos_token="<bos>",
    )
    ours = format_chat(conversation, add_generation_prompt=add_generation_prompt).text
    assert rendered == "<bos>" + ours
    if add_generation_prompt:
        assert rendered == "<bos>" + generation_prompt(conversation)
        assert rendered.endswith("<start_of_turn>model\n")


def test_roles_must_alternate():
    with pytest.raises(ValueError, match="turn 2 is 'user'"):
        format_chat([SINGLE[0], SINGLE[0]])


def test_loss_mask_exactly(proto):
    processor = sentencepiece_processor(proto)
    (example,), _ = tokenize_examples([{"messages": MULTI, "source": "t:1"}], proto, max_tokens=1000)
    ids, mask = example.token_ids.tolist(), example.loss_mask.tolist()
    assert ids[0] == processor.bos_id() and ids.count(processor.bos_id()) == 1
    assert ids[1:] == processor.encode(format_chat(MULTI).text)
    # The runs of loss tokens decode to exactly the two model turns.
    end_of_turn = processor.piece_to_id("<end_of_turn>")
    runs, current = [], []
    for token, weight in zip(ids, mask):
        if weight:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    assert [processor.decode(run) for run in runs] == [
        "因为  瑞利散射。\n第二行 123<end_of_turn>",
        "好的：<b>瑞利</b>\t散射。<end_of_turn>",
    ]
    assert all(run[-1] == end_of_turn for run in runs)
    # The newline after each model <end_of_turn> carries no loss.
    for index, token in enumerate(ids):
        if token == end_of_turn and mask[index]:
            assert mask[index + 1] == 0


def test_full_loss_and_plain_eos(proto):
    processor = sentencepiece_processor(proto)
    (full,), _ = tokenize_examples([{"messages": SINGLE}], proto, max_tokens=1000, loss="full")
    assert full.loss_mask.tolist() == [0] + [1] * (len(full.token_ids) - 1)
    (plain,), _ = tokenize_examples([{"messages": SINGLE}], proto, max_tokens=1000, template="plain")
    assert plain.token_ids[-1] == processor.eos_id() and plain.loss_mask[-1] == 1
    assert processor.decode(plain.token_ids[plain.loss_mask == 1].tolist()) == "熊猫是一种熊。"


def test_byte_fallback_characters_carry_loss_whole(proto):
    """An emoji outside the vocabulary becomes 4 byte pieces; all 4 carry loss."""
    messages = [{"role": "user", "content": "表情"}, {"role": "assistant", "content": "🦊"}]
    (example,), _ = tokenize_examples([{"messages": messages}], proto, max_tokens=1000)
    processor = sentencepiece_processor(proto)
    learned = example.token_ids[example.loss_mask == 1].tolist()
    assert processor.decode(learned) == "🦊<end_of_turn>"
    assert len(learned) == 5


def test_ids_equal_hf_apply_chat_template(proto, tmp_path):
    """Training ids == the exported HF tokenizer's apply_chat_template ids (BOS as an id)."""
    import transformers

    (tmp_path / "tokenizer.model").write_bytes(proto)
    hf_tokenizer = transformers.GemmaTokenizer.from_pretrained(tmp_path)
    examples = [{"messages": conversation} for conversation in CONVERSATIONS]
    tokenized, _ = tokenize_examples(examples, proto, max_tokens=1000)
    for conversation, example in zip(CONVERSATIONS, tokenized):
        hf_ids = hf_tokenizer.apply_chat_template(
            conversation, chat_template=GEMMA_CHAT_TEMPLATE, tokenize=True, return_dict=False
        )
        assert hf_ids == example.token_ids.tolist()


def test_truncation_cuts_the_answer_and_counts(proto):
    processor = sentencepiece_processor(proto)
    long_answer = [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答" * 80}]
    short_answer = [{"role": "user", "content": "问"}, {"role": "assistant", "content": "ok"}]
    prompt_length = 1 + len(processor.encode(generation_prompt(long_answer[:1])))
    limit = prompt_length + 4  # Room for "ok<end_of_turn>\n".
    examples = [{"messages": long_answer}, {"messages": short_answer}]
    full_lengths = [len(e.token_ids) for e in tokenize_examples(examples, proto, max_tokens=10_000)[0]]
    assert full_lengths[1] <= limit < full_lengths[0]

    kept, report = tokenize_examples(examples, proto, max_tokens=limit)
    assert (report.truncated, report.dropped, len(kept)) == (1, 0, 2)
    assert len(kept[0].token_ids) == limit and kept[0].loss_mask.sum() == 4
    assert report.length_max == full_lengths[0]  # Statistics are before truncation.
    assert report.length_p50 == np.percentile(full_lengths, 50)

    kept, report = tokenize_examples(examples, proto, max_tokens=limit, overflow="drop")
    assert (report.truncated, report.dropped, len(kept)) == (0, 1, 1)
    # A limit inside the prompt would leave no answer: dropped, never kept empty.
    kept, report = tokenize_examples(examples[:1], proto, max_tokens=prompt_length)
    assert kept == [] and report.dropped == 1 and report.truncated == 0


# ---------------------------------------------------------------------------
# Gemma 4: `<|turn>`/`<turn|>` turns, a system turn of its own, thinking off.


def test_gemma4_text_exactly():
    assert format_chat(MULTI, template="gemma4").text == (
        "<|turn>system\n你是一个乐于助人的助手。<turn|>\n"
        "<|turn>user\n天空为什么是蓝色的？ 😀<turn|>\n"
        "<|turn>model\n因为  瑞利散射。\n第二行 123<turn|>\n"
        "<|turn>user\n再说一遍<turn|>\n"
        "<|turn>model\n好的：<b>瑞利</b>\t散射。<turn|>\n"
    )
    chat = format_chat(MULTI, template="gemma4")
    assert [chat.text[a:b] for a, b in chat.loss_spans] == [
        "因为  瑞利散射。\n第二行 123<turn|>",
        "好的：<b>瑞利</b>\t散射。<turn|>",
    ]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_gemma4_matches_its_jinja_template(conversation, add_generation_prompt):
    import jinja2

    from kerasgemma.data import CHAT_TEMPLATES

    if add_generation_prompt:
        conversation = conversation[:-1]
    ours = format_chat(conversation, template="gemma4", add_generation_prompt=add_generation_prompt).text
    (rendered,), _ = render_jinja_template(
        [conversation],
        chat_template=CHAT_TEMPLATES["gemma4"],
        add_generation_prompt=add_generation_prompt,
        bos_token="<bos>",
    )
    assert rendered == "<bos>" + ours
    # Plain jinja2 as well, thinking explicitly off.
    template = jinja2.Environment().from_string(CHAT_TEMPLATES["gemma4"])
    plain = template.render(
        messages=conversation, bos_token="<bos>", add_generation_prompt=add_generation_prompt, enable_thinking=False
    )
    assert plain == rendered
    if add_generation_prompt:
        assert rendered.endswith("<|turn>model\n")


def test_gemma4_template_thinking_on_opens_a_system_turn():
    from kerasgemma.data import GEMMA4_CHAT_TEMPLATE

    (rendered,), _ = render_jinja_template(
        [SINGLE[:1]], chat_template=GEMMA4_CHAT_TEMPLATE, add_generation_prompt=True, bos_token="<bos>",
        enable_thinking=True,
    )
    assert rendered == "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\n什么是熊猫？<turn|>\n<|turn>model\n"


def test_gemma4_family_comes_from_the_tokenizer():
    from kerasgemma.data import resolve_template
    from kerasgemma.tiny import GEMMA4_PIECES

    gemma4 = build_tiny_tokenizer_proto([m["content"] for m in MULTI + SINGLE], special_pieces=GEMMA4_PIECES)
    assert resolve_template("gemma", gemma4) == "gemma4"
    assert resolve_template("gemma", build_tiny_tokenizer_proto()) == "gemma3"
    (example,), _ = tokenize_examples([{"messages": SINGLE}], gemma4, max_tokens=200)
    processor = sentencepiece_processor(gemma4)
    assert processor.decode(example.token_ids[1:].tolist()) == format_chat(SINGLE, template="gemma4").text
    # Completion-only loss: the answer and its <turn|>, nothing of the prompt.
    assert processor.decode(example.token_ids[example.loss_mask == 1].tolist()) == "熊猫是一种熊。<turn|>"
