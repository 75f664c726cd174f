"""Tokenizer and generation files of an exported Gemma folder.

The Keras tokenizer's SentencePiece model is written as-is (`tokenizer.model`),
with the chat template and special tokens transformers needs to build chat
prompts, and a `generation_config.json` whose stop tokens include
`<end_of_turn>` (without it chat generation runs past the end of the answer).
`tokenizer.json` is added only when the fast tokenizer built from it gives
the Keras ids on every probe text; otherwise transformers converts
`tokenizer.model` itself at load time.
"""

import os
import shutil
import tempfile

from kerasgemma.atomic import write_json_atomic
from kerasgemma.data.chat_format import TURN_FORMATS
from kerasgemma.data.chat_template import CHAT_TEMPLATES
from kerasgemma.data.tokenize import resolve_template
from kerasgemma.files import GENERATION_CONFIG
from kerasgemma.files import SPECIAL_TOKENS_MAP
from kerasgemma.files import TOKENIZER_CONFIG
from kerasgemma.files import TOKENIZER_JSON
from kerasgemma.files import TOKENIZER_MODEL

START_OF_TURN = TURN_FORMATS["gemma3"].start
END_OF_TURN = TURN_FORMATS["gemma3"].end
# Gemma 4's markers besides the turn ones; written as special tokens when
# the vocabulary has them. `<|tool_response>` also ends a generation.
GEMMA4_MARKERS = (
    "<|think|>", "<|channel>", "<channel|>", "<|tool>", "<tool|>",
    "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
    '<|"|>', "<|image>", "<|image|>", "<image|>", "<|audio>", "<|audio|>",
    "<audio|>", "<|video|>",
)
GEMMA4_EXTRA_STOP = "<|tool_response>"
_SPECIAL = {
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}

# Texts where a wrong conversion shows: CJK, whitespace runs, digits, turn
# markers, byte-fallback characters.
PROBE_TEXTS = (
    "问题：中国的首都是哪里？答案：北京。",
    "  two  spaces\n\n\tand a tab    trailing",
    f"{START_OF_TURN}user\n你好{END_OF_TURN}\n{START_OF_TURN}model\n",
    "Digits 0123456789, emoji 😀, rare 龘.",
    " leading space and <b>html</b>",
)


def chat_family(tokenizer):
    """The chat family of this tokenizer's Gemma generation: "gemma3" (Gemma 1–3) or "gemma4".

    The same rule training uses (`kerasgemma.data.tokenize.resolve_template`),
    so the exported template is the one the model was trained on.
    """
    return resolve_template("gemma", tokenizer)


def is_gemma4_tokenizer(tokenizer):
    """True for a tokenizer with Gemma 4's `<|turn>` markers."""
    return chat_family(tokenizer) == "gemma4"


def turn_markers(tokenizer):
    """`(start, end)` turn markers of this tokenizer's Gemma generation.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> turn_markers(build_tiny_causal_lm("gemma4").preprocessor.tokenizer)
    ('<|turn>', '<turn|>')
    """
    form = TURN_FORMATS[chat_family(tokenizer)]
    return form.start, form.end


def _default_chat_template(tokenizer):
    # One copy of each template lives with the data formatter that
    # produced the training text; the exported one must be the same string.
    return CHAT_TEMPLATES[chat_family(tokenizer)]


def _has_token(tokenizer, token):
    token_id = tokenizer.token_to_id(token)
    return token_id is not None and tokenizer.id_to_token(token_id) == token


def _additional_special_tokens(tokenizer):
    markers = list(turn_markers(tokenizer))
    if is_gemma4_tokenizer(tokenizer):
        markers += [m for m in GEMMA4_MARKERS if _has_token(tokenizer, m)]
    return markers


def _token_id(tokenizer, token):
    token_id = tokenizer.token_to_id(token)
    if token_id is None or tokenizer.id_to_token(token_id) != token:
        raise ValueError(f"The tokenizer has no {token!r} token.")
    return int(token_id)


def special_token_ids(tokenizer):
    """`{token: id}` of Gemma's special and turn tokens in this vocabulary.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> tokenizer = build_tiny_causal_lm("gemma3").preprocessor.tokenizer
    >>> ids = special_token_ids(tokenizer)
    >>> ids["<bos>"], ids["<eos>"], ids["<end_of_turn>"] == tokenizer.token_to_id("<end_of_turn>")
    (2, 1, True)
    """
    tokens = list(_SPECIAL.values()) + _additional_special_tokens(tokenizer)
    return {token: _token_id(tokenizer, token) for token in tokens}


def stop_token_ids(tokenizer):
    """Ids that end a generation: `<eos>`, the end-of-turn marker and, for
    Gemma 4, `<|tool_response>` (Google's Gemma 4 generation config stops on
    all three).

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> tokenizer = build_tiny_causal_lm("gemma4").preprocessor.tokenizer
    >>> stop_token_ids(tokenizer)[1] == tokenizer.token_to_id("<turn|>")
    True
    """
    ids = special_token_ids(tokenizer)
    stops = [ids["<eos>"], ids[turn_markers(tokenizer)[1]]]
    if GEMMA4_EXTRA_STOP in ids:
        stops.append(ids[GEMMA4_EXTRA_STOP])
    return stops


def tokenizer_config(tokenizer, chat_template=None, model_max_length=8192):
    """The `tokenizer_config.json` dict (Gemma's, with the chat template).

    Args:
        tokenizer: keras-hub Gemma tokenizer.
        chat_template: str or None. Jinja template; None for the template
            of the tokenizer's Gemma generation.
        model_max_length: int. Longest input the tokenizer reports.
    """
    ids = special_token_ids(tokenizer)
    added = {
        str(token_id): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token, token_id in sorted(ids.items(), key=lambda item: item[1])
    }
    return {
        "tokenizer_class": "GemmaTokenizer",
        **_SPECIAL,
        "additional_special_tokens": _additional_special_tokens(tokenizer),
        "added_tokens_decoder": added,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
        "model_max_length": model_max_length,
        "chat_template": (
            chat_template if chat_template is not None else _default_chat_template(tokenizer)
        ),
    }


def generation_config(tokenizer):
    """`generation_config.json`: stop on `<eos>` or the end of a turn.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> tokenizer = build_tiny_causal_lm("gemma").preprocessor.tokenizer
    >>> config = generation_config(tokenizer)
    >>> config["eos_token_id"] == [1, tokenizer.token_to_id("<end_of_turn>")]
    True
    """
    ids = special_token_ids(tokenizer)
    return {
        "bos_token_id": ids["<bos>"],
        "eos_token_id": stop_token_ids(tokenizer),
        "pad_token_id": ids["<pad>"],
    }




def write_tokenizer_files(tokenizer, output_dir, chat_template=None):
    """Write tokenizer and generation files for `tokenizer` into `output_dir`.

    Args:
        tokenizer: keras-hub Gemma tokenizer (with `.proto`).
        output_dir: str or path. Existing folder.
        chat_template: str or None. Jinja chat template; None for Gemma's.

    Returns:
        list of the file names written.
    """
    with open(os.path.join(output_dir, TOKENIZER_MODEL), "wb") as f:
        f.write(tokenizer.proto)
    config = tokenizer_config(tokenizer, chat_template)
    write_json_atomic(os.path.join(output_dir, TOKENIZER_CONFIG), config)
    write_json_atomic(
        os.path.join(output_dir, SPECIAL_TOKENS_MAP),
        {**_SPECIAL, "additional_special_tokens": _additional_special_tokens(tokenizer)},
    )
    write_json_atomic(os.path.join(output_dir, GENERATION_CONFIG), generation_config(tokenizer))
    written = [TOKENIZER_MODEL, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, GENERATION_CONFIG]
    if _write_faithful_tokenizer_json(tokenizer, output_dir):
        written.append(TOKENIZER_JSON)
    return written


def _write_faithful_tokenizer_json(tokenizer, output_dir):
    """Add `tokenizer.json` if transformers' conversion matches Keras ids."""
    try:
        import transformers
    except ImportError:
        return False
    with tempfile.TemporaryDirectory() as scratch:
        converted = transformers.AutoTokenizer.from_pretrained(output_dir)
        converted.save_pretrained(scratch)
        candidate = os.path.join(scratch, TOKENIZER_JSON)
        if not os.path.exists(candidate):
            return False
        # Load from tokenizer.json alone, the way a user's fast tokenizer will.
        probe_dir = os.path.join(scratch, "probe")
        os.makedirs(probe_dir)
        shutil.copy(candidate, probe_dir)
        shutil.copy(os.path.join(output_dir, TOKENIZER_CONFIG), probe_dir)
        fast = transformers.AutoTokenizer.from_pretrained(probe_dir)
        for text in PROBE_TEXTS:
            keras_ids = [int(i) for i in tokenizer(text)]
            if fast(text, add_special_tokens=False)["input_ids"] != keras_ids:
                return False
        shutil.copy(candidate, os.path.join(output_dir, TOKENIZER_JSON))
    return True
