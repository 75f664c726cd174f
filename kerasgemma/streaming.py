"""Token-by-token generation, for printing an answer while it is written (`kerasgemma chat`).

keras-hub's `CausalLM.generate` compiles the whole decoding loop into one
XLA program, so nothing comes back before the last token. `TokenStream`
runs the same computation a step at a time: one compiled *prefill* fills
the key/value cache from the prompt (keras-hub's `_build_cache`), then one
compiled *decode step* (`call_with_cache` on the newest token, then the
sampler) is called from Python per new token. Both are compiled once per
buffer length: the prompt length rounded up to `PROMPT_BUCKET` tokens plus
`max_new_tokens`, so a conversation does not recompile at every turn.

The steps are keras-hub's own, in keras-hub's order (the cache of the
prompt's last token is kept from the prefill, as `generate_step` does), so
greedy streaming gives exactly `generate`'s tokens
(tests/test_streaming.py). Sampling uses the keras-hub samplers of
`kerasgemma.generation.make_sampler`, with their seed state carried between
steps.

`text_pieces` turns the token ids into text as it becomes printable: a
SentencePiece byte-fallback piece (`<0xE4>`) is one byte of a multibyte
character, so text ending in an incomplete character (`\\ufffd` when
decoded) waits for the next token.
"""

import inspect
import itertools

import jax
import keras
import numpy as np

from kerasgemma.data import generation_prompt
from kerasgemma.data.tokenize import resolve_template
from kerasgemma.generation import make_sampler
from kerasgemma.generation import stop_token_ids

PROMPT_BUCKET = 64
INCOMPLETE_CHARACTER = "\ufffd"


def buffer_length(prompt_length, max_new_tokens, bucket=PROMPT_BUCKET):
    """Tokens of the generation buffer: the prompt rounded up to `bucket`, plus `max_new_tokens`.

    Example:
    >>> buffer_length(10, 256), buffer_length(64, 256), buffer_length(65, 256)
    (320, 320, 384)
    """
    return -(-prompt_length // bucket) * bucket + max_new_tokens


class TokenStream:
    """Generate token ids one at a time from a keras-hub Gemma causal LM (any generation).

    Args:
        causal_lm: a keras-hub `GemmaCausalLM`, `Gemma3CausalLM` or
            `Gemma4CausalLM` with its preprocessor (LoRA enabled or not).
        sampler: "greedy", "top_k", "top_p" or "random"; `sampler_args`
            (temperature, top_k, top_p, seed) as in
            `kerasgemma.generation.make_sampler`.

    Example:
    >>> from kerasgemma.model import load_causal_lm
    >>> stream = TokenStream(load_causal_lm("tiny:gemma"))
    >>> len(list(stream.token_ids("你好", max_new_tokens=3))) <= 3
    True
    """

    def __init__(self, causal_lm, sampler="greedy", **sampler_args):
        self.causal_lm = causal_lm
        self.tokenizer = causal_lm.preprocessor.tokenizer
        self.sampler = make_sampler(sampler, **sampler_args)
        self.stop_ids = frozenset(stop_token_ids(self.tokenizer))
        self._prefill = jax.jit(self._stateless(self._prefill_step))
        self._decode = jax.jit(self._stateless(self._decode_step))
        # Gemma 3 and 4 take the multimodal inputs (None here) and masks; Gemma and Gemma 2 do not.
        self._multimodal = "padding_mask" in inspect.signature(causal_lm._build_cache).parameters

    def token_ids(self, prompt, max_new_tokens=256):
        """Yield the ids that continue `prompt` (raw text; BOS added), until a stop token or `max_new_tokens`.

        The stop token itself is not yielded.
        """
        preprocessor = self.causal_lm.preprocessor
        prompt_length = len(self.tokenizer(prompt)) + 1  # + BOS
        length = buffer_length(prompt_length, max_new_tokens)
        inputs = preprocessor.generate_preprocess([prompt], sequence_length=length)
        token_ids = np.array(inputs["token_ids"], dtype="int32")
        padding_mask = np.asarray(inputs["padding_mask"])
        state = self._state()
        cache, sampler_values = self._prefill(state, token_ids, padding_mask)
        try:
            for index in range(prompt_length, prompt_length + max_new_tokens):
                state = (sampler_values,) + state[1:]
                next_token, cache, sampler_values = self._decode(
                    state, token_ids[:, index - 1:index], cache, np.int32(index - 1), np.int32(prompt_length)
                )
                token = int(np.asarray(next_token)[0])
                if token in self.stop_ids:
                    return
                token_ids[0, index] = token
                yield token
        finally:
            # The next answer continues the seed sequence, as after keras-hub's `generate`.
            for variable, value in zip(self.sampler.variables, sampler_values):
                variable.assign(value)

    def chat(self, messages, template="gemma", max_new_tokens=256):
        """Yield the answer to a conversation (`{"role", "content"}` dicts) as printable text pieces.

        Formatted as in training and as `kerasgemma.generation.chat` (`template`: "gemma",
        "gemma3", "gemma4" or "plain"); joined, the pieces are that function's greedy answer.
        """
        template = resolve_template(template, self.tokenizer)
        prompt = generation_prompt(messages, template=template)
        yield from text_pieces(self.tokenizer, self.token_ids(prompt, max_new_tokens))

    # -- compiled parts ----------------------------------------------------

    def _state(self):
        lm = self.causal_lm
        return (
            [variable.value for variable in self.sampler.variables],
            [variable.value for variable in lm.trainable_variables],
            [variable.value for variable in lm.non_trainable_variables],
        )

    def _stateless(self, step):
        """`step(*args)` (returning a tuple) as a pure function of `(state, *args)`, returning the
        sampler's new seed state last (how keras-hub's `make_generate_function` runs `generate_step`
        under `jax.jit`)."""
        lm = self.causal_lm

        def run(state, *args):
            sampler_values, trainable, non_trainable = state
            mapping = itertools.chain(
                zip(self.sampler.variables, sampler_values),
                zip(lm.trainable_variables, trainable),
                zip(lm.non_trainable_variables, non_trainable),
            )
            with keras.StatelessScope(state_mapping=mapping) as scope:
                outputs = step(*args)
            new_values = [scope.get_current_value(variable) for variable in self.sampler.variables]
            new_values = [old if new is None else new for old, new in zip(sampler_values, new_values)]
            return (*outputs, new_values)

        return run

    def _prefill_step(self, token_ids, padding_mask):
        if self._multimodal:
            _, cache = self.causal_lm._build_cache(
                token_ids, img_embeddings=None, vision_mask=None, padding_mask=padding_mask, vision_indices=None
            )
        else:
            _, cache = self.causal_lm._build_cache(token_ids)
        return (cache,)

    def _decode_step(self, token, cache, cache_index, prompt_length):
        extra = {}
        if self._multimodal:
            # As keras-hub's `generate_step`: the prompt's last position keeps its prefill cache.
            extra["cache_update_mask"] = keras.ops.full((1, 1), cache_index >= prompt_length)
        logits, _, cache = self.causal_lm.call_with_cache(token, cache, cache_index, **extra)
        probabilities = self.sampler.compute_probabilities(logits[:, 0, :])
        return self.sampler.get_next_token(probabilities), cache


def text_pieces(tokenizer, token_ids):
    """Yield the text of `token_ids` (an iterable of ids) in pieces, each as soon as it is whole characters.

    Special tokens are left out as keras-hub's `generate_postprocess` does
    (Gemma 3 keeps `<start_of_image>`), so joined, the pieces are the text
    `generate` returns for the same ids.

    Example:
    >>> from kerasgemma.tiny import build_tiny_tokenizer
    >>> tokenizer = build_tiny_tokenizer()
    >>> ids = [int(i) for i in tokenizer("中国的首都")]
    >>> "".join(text_pieces(tokenizer, ids))
    '中国的首都'
    """
    hidden = hidden_token_ids(tokenizer)
    ids, shown = [], ""
    for token in token_ids:
        if int(token) in hidden:
            continue
        ids.append(int(token))
        text = _detokenize(tokenizer, ids)
        if text.endswith(INCOMPLETE_CHARACTER):
            continue
        yield text[len(shown):]
        shown = text
    if ids:
        text = _detokenize(tokenizer, ids)
        if text != shown:
            yield text[len(shown):]


def hidden_token_ids(tokenizer):
    """The ids keras-hub's `generate_postprocess` drops from an answer: the special tokens,
    except Gemma 3's `<start_of_image>`."""
    hidden = set(getattr(tokenizer, "special_token_ids", ()))
    hidden.discard(getattr(tokenizer, "start_of_image_token_id", None))
    return frozenset(hidden)


def _detokenize(tokenizer, ids):
    text = tokenizer.detokenize([ids])[0]
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
