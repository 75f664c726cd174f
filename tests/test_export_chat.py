"""The exported folder as a user meets it: chat template and `pipeline("text-generation")`."""

import pytest
import torch
import transformers

from kerasgemma.data import format_chat, generation_prompt
from kerasgemma.data.tokenize import sentencepiece_processor, tokenize_examples
from kerasgemma.export import export_merged
from kerasgemma.export.verify import _keras_greedy, keras_forward
from kerasgemma.tiny import build_tiny_causal_lm

CONVERSATION = [
    {"role": "system", "content": "用中文回答。"},
    {"role": "user", "content": "中国的首都是哪里？"},
    {"role": "assistant", "content": "北京。"},
    {"role": "user", "content": "The quick brown fox?"},
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    lm = build_tiny_causal_lm("gemma3")
    folder = export_merged(lm, tmp_path_factory.mktemp("chat") / "hf", dtype="float32")
    return lm, folder


def test_chat_template_equals_training_format(exported):
    lm, folder = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    # Text: the template renders BOS as "<bos>"; the formatter leaves it to the ids.
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered == "<bos>" + generation_prompt(CONVERSATION)
    finished = CONVERSATION + [{"role": "assistant", "content": "A dog."}]
    assert tokenizer.apply_chat_template(finished, tokenize=False) == "<bos>" + format_chat(finished).text
    # Ids: training ids (BOS as an id, then the formatted text) equal the template's.
    (example,), _ = tokenize_examples([{"messages": finished}], lm.preprocessor.tokenizer, max_tokens=512)
    template_ids = tokenizer.apply_chat_template(finished, tokenize=True, return_dict=True)["input_ids"]
    assert example.token_ids.tolist() == list(template_ids)
    processor = sentencepiece_processor(lm.preprocessor.tokenizer)
    prompt_ids = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=True)
    assert list(prompt_ids["input_ids"]) == [processor.bos_id()] + processor.encode(generation_prompt(CONVERSATION))


def test_pipeline_answers_like_keras(exported):
    lm, folder = exported
    chat = transformers.pipeline("text-generation", model=folder)
    messages = CONVERSATION[1:2]
    out = chat(messages, max_new_tokens=6, do_sample=False)  # a tiny random model: gibberish, but runs
    answer = out[0]["generated_text"][-1]
    assert answer["role"] == "assistant" and isinstance(answer["content"], str)
    # Same tokens as our Keras greedy loop on the same prompt ids.
    tokenizer = chat.tokenizer
    prompt_ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    return_dict=True)["input_ids"])
    stop = {tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id}
    keras_ids = _keras_greedy(keras_forward(lm, len(prompt_ids) + 6), prompt_ids, 6, stop)
    expected = tokenizer.decode([t for t in keras_ids if t not in stop], skip_special_tokens=True)
    assert answer["content"] == expected
    # And as transformers' own greedy generate.
    hf_ids = chat.model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=6,
                                 do_sample=False)[0, len(prompt_ids):].tolist()
    assert hf_ids[: len(keras_ids)] == keras_ids
