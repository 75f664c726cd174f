"""Deterministic train/validation split that keeps a question on one side."""

import math

import numpy as np


def split_examples(examples, validation_fraction=0.05, seed=0):
    """Split examples into train and validation by seed.

    Examples that share their first user message (one HC3 question with
    several answers, `answers="all"`) go to the same side, so validation
    never asks a question the model was trained on. About
    `validation_fraction` of the questions (at least one when the fraction
    is positive, and never all of them) go to validation; order within each
    side is kept.

    Args:
        examples: list of example dicts with `messages`.
        validation_fraction: float in [0, 1).
        seed: int. The same seed gives the same split.

    Returns:
        `(train, validation)` lists.

    Example:
    >>> examples = [{"messages": [{"role": "user", "content": str(i)},
    ...                           {"role": "assistant", "content": "a"}]} for i in range(10)]
    >>> train, validation = split_examples(examples, validation_fraction=0.2, seed=1)
    >>> len(train), len(validation)
    (8, 2)
    >>> split_examples(examples, 0.2, seed=1)[1] == validation
    True
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
    keys = [_question_key(example["messages"]) for example in examples]
    questions = list(dict.fromkeys(keys))
    count = math.ceil(validation_fraction * len(questions)) if validation_fraction else 0
    count = min(count, len(questions) - 1)  # Never hold out the only question(s) to train on.
    order = np.random.default_rng(seed).permutation(len(questions))
    held_out = {questions[i] for i in order[:count]}
    train = [e for e, key in zip(examples, keys) if key not in held_out]
    validation = [e for e, key in zip(examples, keys) if key in held_out]
    return train, validation


def _question_key(messages):
    return next((m["content"] for m in messages if m["role"] == "user"), "")
