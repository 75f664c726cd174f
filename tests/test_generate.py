"""Generation helpers: greedy and seeded sampling, stop at `<end_of_turn>`, batches, chat template."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kerasgemma import generation as generate_module
from kerasgemma.data import generation_prompt, tokenize_examples
from kerasgemma.generation import END_OF_TURN, chat, generate, make_sampler, stop_token_ids
from kerasgemma.model import load_causal_lm

QUESTION = [{"role": "user", "content": "中国的首都是哪里？"}]


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm("tiny:gemma")


def _single_id(tokenizer, text):
    ids = np.asarray(tokenizer(text)).tolist()
    assert len(ids) == 1, (text, ids)
    return ids[0]


@pytest.fixture
def scripted_lm(lm):
    """The tiny model with its logits replaced by a fixed next-token table:
    after the prompt it says 你好<end_of_turn>北京<end_of_turn>…"""
    tokenizer = lm.preprocessor.tokenizer
    ni, hao, bei, jing = (_single_id(tokenizer, text) for text in "你好北京")
    end_of_turn = tokenizer.token_to_id(END_OF_TURN)
    table = np.full(lm.backbone.vocabulary_size, ni, np.int32)
    table[[ni, hao, end_of_turn, bei, jing]] = [hao, end_of_turn, bei, jing, end_of_turn]
    table = jnp.asarray(table)
    original = lm.call_with_cache

    def call_with_cache(token_ids, cache, cache_update_index):
        logits, hidden_states, cache = original(token_ids, cache, cache_update_index)
        forced = jax.nn.one_hot(table[token_ids], logits.shape[-1], dtype=logits.dtype) * 100
        return forced, hidden_states, cache

    lm.call_with_cache = call_with_cache
    yield lm
    del lm.call_with_cache
    lm.generate_function = None  # drop the compiled scripted version


def test_stops_at_end_of_turn_for_every_prompt_of_a_batch(scripted_lm):
    tokenizer = scripted_lm.preprocessor.tokenizer
    assert tokenizer.token_to_id(END_OF_TURN) in stop_token_ids(tokenizer)
    prompts = [generation_prompt(QUESTION), "短", generation_prompt([{"role": "user", "content": "一个长得多的问题" * 3}])]
    assert generate(scripted_lm, prompts, max_new_tokens=8) == ["你好", "你好", "你好"]
    assert generate(scripted_lm, "短", max_new_tokens=8) == "你好"  # a str in, a str out
    assert chat(scripted_lm, QUESTION, max_new_tokens=8) == "你好"


def test_greedy_is_deterministic_and_batching_does_not_change_answers(lm):
    prompts = [generation_prompt(QUESTION), generation_prompt([{"role": "user", "content": "你好"}])]
    batched = generate(lm, prompts, max_new_tokens=6)
    assert batched == generate(lm, prompts, max_new_tokens=6)
    assert batched == [generate(lm, prompt, max_new_tokens=6) for prompt in prompts]
    assert all(END_OF_TURN not in answer for answer in batched)


@pytest.mark.slow
def test_sampling_is_seeded_and_top_k_1_is_greedy(lm):
    # Each sampler compiles its own generate function (a few seconds each on
    # CPU), so this test keeps the number of calls low.
    prompt = generation_prompt(QUESTION)
    greedy = generate(lm, prompt, max_new_tokens=8)
    assert generate(lm, prompt, max_new_tokens=8, sampler="top_k", top_k=1, temperature=3.0, seed=1) == greedy
    options = dict(max_new_tokens=8, temperature=5.0, top_k=500)
    first = generate(lm, prompt, sampler="top_k", seed=3, **options)
    assert generate(lm, prompt, sampler="top_k", seed=3, **options) == first
    first = generate(lm, prompt, sampler="top_p", top_p=0.99, seed=3, **options)
    assert generate(lm, prompt, sampler="top_p", top_p=0.99, seed=3, **options) == first
    assert generate(lm, prompt, sampler="top_p", top_p=0.99, seed=4, **options) != first  # the seed matters
    with pytest.raises(ValueError, match="Unknown sampler 'beam'"):
        make_sampler("beam")


def test_chat_prompts_are_the_training_template(lm, monkeypatch):
    seen = []

    def fake_generate(causal_lm, prompts, **kwargs):
        seen.extend(prompts)
        return ["答"] * len(prompts)

    monkeypatch.setattr(generate_module, "generate", fake_generate)
    conversations = [QUESTION, [{"role": "system", "content": "用中文回答。"}, {"role": "user", "content": "1+1=?"}]]
    assert chat(lm, conversations) == ["答", "答"]
    assert chat(lm, QUESTION, template="plain") == "答"
    assert seen == [generation_prompt(c) for c in conversations] + [generation_prompt(QUESTION, template="plain")]

    # And as token ids: what generation feeds the model (BOS + prompt) is the
    # start of the training example of the same conversation.
    example = {"messages": QUESTION + [{"role": "assistant", "content": "北京。"}], "source": "test:1"}
    (tokenized,), _ = tokenize_examples([example], lm.preprocessor.tokenizer, max_tokens=128)
    inputs = lm.preprocessor.generate_preprocess([generation_prompt(QUESTION)])
    length = int(np.asarray(inputs["padding_mask"])[0].sum())
    prompt_ids = np.asarray(inputs["token_ids"])[0, :length]
    np.testing.assert_array_equal(prompt_ids, tokenized.token_ids[:length])
    assert tokenized.loss_mask[:length].sum() == 0  # the prompt carries no loss
