"""Text generation: greedy or sampled, stopping at the end of the turn, batched.

Thin layer over keras-hub's `CausalLM.generate` and samplers; it adds the
chat formatting used in training and a token budget counted from the prompt
(keras-hub's `max_length` counts prompt and answer together).
"""

import keras_hub
import numpy as np

from kerasgemma.data import generation_prompt
from kerasgemma.data.chat_format import TURN_FORMATS
from kerasgemma.data.tokenize import resolve_template
from kerasgemma.distribution import pad_to_replicas

END_OF_TURN = "<end_of_turn>"
SAMPLERS = ("greedy", "top_k", "top_p", "random")


def make_sampler(sampler="greedy", temperature=1.0, top_k=None, top_p=None, seed=None):
    """A keras-hub sampler from plain settings.

    Args:
        sampler: "greedy", "top_k", "top_p" (nucleus) or "random".
        temperature: float. Softmax temperature for the sampling kinds.
        top_k: int. k for "top_k" (and an optional cap for "top_p").
        top_p: float. p for "top_p".
        seed: int or None. Seed for reproducible sampling.

    Example:
    >>> type(make_sampler("top_p", top_p=0.9, temperature=0.7, seed=1)).__name__
    'TopPSampler'
    """
    samplers = keras_hub.samplers
    if sampler == "greedy":
        return samplers.GreedySampler()
    if sampler == "top_k":
        return samplers.TopKSampler(k=top_k or 50, temperature=temperature, seed=seed)
    if sampler == "top_p":
        return samplers.TopPSampler(p=top_p or 0.9, k=top_k, temperature=temperature, seed=seed)
    if sampler == "random":
        return samplers.RandomSampler(temperature=temperature, seed=seed)
    raise ValueError(f"Unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}.")


def stop_token_ids(tokenizer):
    """End-of-sequence and end-of-turn ids of a Gemma tokenizer
    (`<end_of_turn>`, Gemma 4's `<turn|>`: whichever it has)."""
    ids = [tokenizer.end_token_id]
    vocabulary = set(tokenizer.get_vocabulary())
    for form in TURN_FORMATS.values():
        if form.end in vocabulary:
            ids.append(tokenizer.token_to_id(form.end))
    return tuple(ids)


def _before_end_of_turn(text):
    for form in TURN_FORMATS.values():
        text = text.split(form.end)[0]
    return text


def generate(causal_lm, prompts, max_new_tokens=64, sampler="greedy", **sampler_args):
    """Continue each prompt (raw text, BOS added by the model) until a stop token.

    Args:
        causal_lm: a keras-hub causal LM with a preprocessor.
        prompts: str or list of str.
        max_new_tokens: int. Most tokens added to each prompt.
        sampler: see `make_sampler`; `sampler_args` go there too.

    Returns the completions (prompt removed, stop token and anything after
    it dropped), a str for a str prompt, else a list.

    Example:
    >>> from kerasgemma.model import load_causal_lm
    >>> lm = load_causal_lm("tiny:gemma")
    >>> isinstance(generate(lm, "你好", max_new_tokens=4), str)
    True
    """
    single = isinstance(prompts, str)
    # Under data parallel every replica needs a row: pad the batch, drop the extras.
    prompts, count = pad_to_replicas([prompts] if single else list(prompts))
    preprocessor = causal_lm.preprocessor
    tokenizer = preprocessor.tokenizer
    longest = max(len(tokenizer(prompt)) for prompt in prompts) + 1  # + BOS
    causal_lm.compile(sampler=make_sampler(sampler, **sampler_args))
    # keras-hub's `generate(max_length=...)` is one budget for the whole
    # batch, counted from the start: a short prompt batched with a long one
    # would get more new tokens than alone. We run its compiled function on
    # the preprocessed batch and keep `max_new_tokens` per row ourselves.
    inputs = preprocessor.generate_preprocess(prompts, sequence_length=longest + max_new_tokens)
    outputs = causal_lm.make_generate_function()(inputs, stop_token_ids=stop_token_ids(tokenizer))
    prompt_mask = np.asarray(inputs["padding_mask"])
    positions = np.arange(prompt_mask.shape[1])
    within_budget = positions[None, :] < prompt_mask.sum(axis=1, keepdims=True) + max_new_tokens
    answer_mask = np.asarray(outputs["padding_mask"]) & ~prompt_mask & within_budget
    texts = preprocessor.generate_postprocess({"token_ids": np.asarray(outputs["token_ids"]), "padding_mask": answer_mask})
    answers = [_before_end_of_turn(text) for text in texts[:count]]
    return answers[0] if single else answers


def chat(causal_lm, messages, max_new_tokens=128, template="gemma", **generate_args):
    """Answer a conversation formatted exactly as in training.

    Args:
        causal_lm: a keras-hub causal LM.
        messages: list of `{"role", "content"}` dicts, or a list of such lists
            for a batch.
        template: "gemma" (the model's own Gemma chat format), "gemma3",
            "gemma4" or "plain", as in `kerasgemma.data`.

    Example:
    >>> from kerasgemma.model import load_causal_lm
    >>> lm = load_causal_lm("tiny:gemma3")
    >>> isinstance(chat(lm, [{"role": "user", "content": "你好"}], max_new_tokens=3), str)
    True
    """
    template = resolve_template(template, causal_lm.preprocessor.tokenizer)
    single = isinstance(messages[0], dict)
    conversations = [messages] if single else messages
    prompts = [generation_prompt(conversation, template=template) for conversation in conversations]
    answers = generate(causal_lm, prompts, max_new_tokens=max_new_tokens, **generate_args)
    return answers[0] if single else answers
