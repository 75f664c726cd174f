"""The Hugging Face repo of the model a keras-hub preset holds, for model cards and adapters.

keras-hub's preset metadata names Kaggle handles only, so the mapping is a
table: each keras-hub Gemma preset and the Hub repo Google publishes the same
weights under (base presets: the pretrained repo, `instruct` presets: `-it`).
The Gemma 4 repo ids follow Google's naming on the Hub (`gemma-4-E2B`,
`-E4B`, `-31B`, `-26B-A4B`); the Hub resolves repo ids case-insensitively.
A preset not in the table keeps its own name, so the card never claims a
base it does not know.
"""

from kerasgemma.data.loading import HUB_PREFIX

KAGGLE_PREFIX = "kaggle://"
OFFLINE_GEMMA3_270M = "offline:gemma3_270m"

HF_BASE_MODELS = {
    # Gemma 1
    "gemma_2b_en": "google/gemma-2b",
    "gemma_instruct_2b_en": "google/gemma-2b-it",
    "gemma_1.1_instruct_2b_en": "google/gemma-1.1-2b-it",
    "gemma_7b_en": "google/gemma-7b",
    "gemma_instruct_7b_en": "google/gemma-7b-it",
    "gemma_1.1_instruct_7b_en": "google/gemma-1.1-7b-it",
    "code_gemma_2b_en": "google/codegemma-2b",
    "code_gemma_1.1_2b_en": "google/codegemma-1.1-2b",
    "code_gemma_7b_en": "google/codegemma-7b",
    "code_gemma_instruct_7b_en": "google/codegemma-7b-it",
    "code_gemma_1.1_instruct_7b_en": "google/codegemma-1.1-7b-it",
    # Gemma 2
    "gemma2_2b_en": "google/gemma-2-2b",
    "gemma2_instruct_2b_en": "google/gemma-2-2b-it",
    "gemma2_9b_en": "google/gemma-2-9b",
    "gemma2_instruct_9b_en": "google/gemma-2-9b-it",
    "gemma2_27b_en": "google/gemma-2-27b",
    "gemma2_instruct_27b_en": "google/gemma-2-27b-it",
    # Gemma 3 (the `_text` presets are the text decoder of the same checkpoint)
    "gemma3_270m": "google/gemma-3-270m",
    "gemma3_instruct_270m": "google/gemma-3-270m-it",
    "gemma3_1b": "google/gemma-3-1b-pt",
    "gemma3_instruct_1b": "google/gemma-3-1b-it",
    **{f"gemma3_{size}{text}": f"google/gemma-3-{size}-pt" for size in ("4b", "12b", "27b") for text in ("", "_text")},
    **{f"gemma3_instruct_{size}{text}": f"google/gemma-3-{size}-it"
       for size in ("4b", "12b", "27b") for text in ("", "_text")},
    # Gemma 4
    "gemma4_2b": "google/gemma-4-E2B",
    "gemma4_instruct_2b": "google/gemma-4-E2B-it",
    "gemma4_4b": "google/gemma-4-E4B",
    "gemma4_instruct_4b": "google/gemma-4-E4B-it",
    "gemma4_26b_a4b": "google/gemma-4-26B-A4B",
    "gemma4_instruct_26b_a4b": "google/gemma-4-26B-A4B-it",
    "gemma4_31b": "google/gemma-4-31B",
    "gemma4_instruct_31b": "google/gemma-4-31B-it",
    # kerasgemma's offline preset: Gemma 3 270M (pretrained) rebuilt from a Q4_K_M GGUF
    OFFLINE_GEMMA3_270M: "google/gemma-3-270m",
}


def hf_base_model(preset):
    """The Hugging Face repo id of `preset`'s model, or `preset` itself when none is known.

    Takes a keras-hub preset name, a `kaggle://OWNER/MODEL/keras/PRESET[/VERSION]`
    handle or an `hf://OWNER/NAME` preset.

    Example:
    >>> hf_base_model("gemma_2b_en"), hf_base_model("gemma3_instruct_1b")
    ('google/gemma-2b', 'google/gemma-3-1b-it')
    >>> hf_base_model("kaggle://keras/gemma3/keras/gemma3_1b/3"), hf_base_model("hf://google/gemma-3-270m")
    ('google/gemma-3-1b-pt', 'google/gemma-3-270m')
    >>> hf_base_model("tiny:gemma3")
    'tiny:gemma3'
    """
    if preset.startswith(HUB_PREFIX):
        return preset[len(HUB_PREFIX):].strip("/")
    name = preset
    if preset.startswith(KAGGLE_PREFIX):
        parts = preset[len(KAGGLE_PREFIX):].strip("/").split("/")
        name = parts[3] if len(parts) >= 4 else preset
    return HF_BASE_MODELS.get(name, preset)
