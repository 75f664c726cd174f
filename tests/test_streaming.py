"""Step-wise generation (`kerasgemma.streaming`): the same tokens as keras-hub's compiled `generate`."""

import numpy as np
import pytest

from kerasgemma.generation import generate
from kerasgemma.generation import stop_token_ids
from kerasgemma.streaming import TokenStream
from kerasgemma.streaming import buffer_length
from kerasgemma.streaming import text_pieces
from kerasgemma.tiny import build_tiny_tokenizer

PROMPT = "中国的首都是哪里？"


def generated_ids(lm, prompt, max_new_tokens):
    """keras-hub's greedy ids after `prompt`, up to (without) the first stop token."""
    preprocessor = lm.preprocessor
    prompt_length = len(preprocessor.tokenizer(prompt)) + 1
    inputs = preprocessor.generate_preprocess([prompt], sequence_length=prompt_length + max_new_tokens)
    lm.compile(sampler="greedy")
    outputs = lm.make_generate_function()(inputs, stop_token_ids=stop_token_ids(preprocessor.tokenizer))
    ids = [int(i) for i in np.asarray(outputs["token_ids"])[0, prompt_length:]]
    stops = [position for position, token in enumerate(ids) if token in stop_token_ids(preprocessor.tokenizer)]
    return ids[:stops[0]] if stops else ids


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["gemma", "gemma2", "gemma3", "gemma4"])
def test_greedy_stream_gives_generates_tokens_and_text(architecture, shared_tiny_lm):
    lm = shared_tiny_lm(architecture)
    stream = TokenStream(lm)
    streamed = list(stream.token_ids(PROMPT, max_new_tokens=10))
    # A buffer longer than generate's (the prompt bucket) changes nothing.
    assert buffer_length(len(lm.preprocessor.tokenizer(PROMPT)) + 1, 10) > len(lm.preprocessor.tokenizer(PROMPT)) + 11
    assert streamed == generated_ids(lm, PROMPT, 10)
    assert len(streamed) > 0
    assert "".join(text_pieces(lm.preprocessor.tokenizer, streamed)) == generate(lm, PROMPT, max_new_tokens=10)


@pytest.mark.slow
def test_sampled_stream_repeats_with_a_seed_and_continues_the_seed_sequence(shared_tiny_lm):
    lm = shared_tiny_lm("gemma")
    first = TokenStream(lm, sampler="random", temperature=5.0, seed=7)
    second = TokenStream(lm, sampler="random", temperature=5.0, seed=7)
    answers = [list(first.token_ids(PROMPT, max_new_tokens=8)) for _ in range(2)]
    assert list(second.token_ids(PROMPT, max_new_tokens=8)) == answers[0]
    assert answers[1] != answers[0]  # a hot random sampler: 8 equal draws from ~600 ids would be a stuck seed


def test_text_pieces_print_a_multibyte_character_only_when_complete():
    tokenizer = build_tiny_tokenizer("gemma")
    ids = [int(i) for i in tokenizer("中国龘😀")]
    pieces = list(text_pieces(tokenizer, ids))
    assert len(pieces) < len(ids)  # the byte-fallback pieces of 龘 and 😀 were held back
    assert "".join(pieces) == "中国龘😀"
    assert all("\ufffd" not in piece for piece in pieces)
    assert "龘" in pieces and "😀" in pieces
