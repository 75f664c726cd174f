"""Greedy generation with mlx-lm from an exported folder, where installed.

mlx-lm reads config.json itself (its own Gemma classes, its own flat keys
such as `sliding_window_pattern` and `rope_local_base_freq`), so agreeing
with transformers here is a separate check of the folder.
"""


def mlx_greedy(folder, prompt_ids, max_new_tokens, stop_ids, banned=()):
    """Greedy tokens mlx-lm generates (float32) per prompt; None without mlx-lm.

    Args:
        folder: str. An exported (merged) folder.
        prompt_ids: list of lists of int. Prompts with their bos id.
        max_new_tokens: int. Tokens to generate at most.
        stop_ids: set of int. Generation stops after one of these.
        banned: ids never generated (media placeholders, see
            `kerasgemma.export.verify.media_placeholder_ids`).

    Example:
    >>> import json, tempfile
    >>> import kerasgemma as kg
    >>> out = tempfile.mkdtemp() + "/hf"
    >>> folder = kg.convert("tiny:gemma", out, verify=False, progress=False, log=lambda line: None).folder
    >>> tokens = mlx_greedy(folder, [[2, 10, 11], [2, 12]], 3, stop_ids=set())
    >>> [len(t) for t in tokens]  # no stop id: exactly max_new_tokens each (needs mlx-lm, pinned in requirements.txt)
    [3, 3]
    >>> vocabulary_size = json.load(open(f"{folder}/config.json"))["vocab_size"]
    >>> all(0 <= t < vocabulary_size for t in tokens[0] + tokens[1])
    True
    """
    try:
        import mlx.core as mx
        from mlx_lm import load
        from mlx_lm.generate import generate_step
    except ImportError:
        return None
    model, _ = load(folder)
    # Same precision as the transformers check: the folder's weights, upcast.
    model.set_dtype(mx.float32)
    processors = []
    if banned:
        mask = mx.zeros((model.args.text_config["vocab_size"] if hasattr(model.args, "text_config")
                         else model.args.vocab_size,))
        mask[mx.array(sorted(banned))] = -mx.inf
        processors.append(lambda tokens, logits: logits + mask)
    results = []
    for ids in prompt_ids:
        tokens = []
        for token, _ in generate_step(mx.array(ids), model, max_tokens=max_new_tokens,
                                      logits_processors=processors):
            tokens.append(int(token))
            if tokens[-1] in stop_ids:
                break
        results.append(tokens)
    return results
