"""Export a Keras Gemma causal LM (LoRA merged) as a transformers folder."""

import os

from kerasgemma.atomic import write_json_atomic
from kerasgemma.export.folder import atomic_folder
from kerasgemma.export.hf_config import hf_config
from kerasgemma.export.safetensors_io import write_sharded
from kerasgemma.export.tokenizer_files import write_tokenizer_files
from kerasgemma.export.weights import hf_tensors
from kerasgemma.files import HF_CONFIG



def export_merged(
    causal_lm,
    output_dir,
    dtype="bfloat16",
    max_shard_size="2GB",
    merge_lora=True,
    chat_template=None,
    progress=None,
    overwrite=False,
):
    """Write `causal_lm` as a Hugging Face folder transformers loads directly.

    The folder holds `config.json`, safetensors weights (sharded with an index
    above `max_shard_size`), `tokenizer.model`, `tokenizer_config.json` with
    the chat template, `special_tokens_map.json`, `tokenizer.json` when it is
    faithful, and `generation_config.json`. Tensors are converted and written
    one by one, and the folder appears only once complete.

    Args:
        causal_lm: a keras-hub Gemma 1–4 causal LM, with or without LoRA.
            A multimodal one (vision/audio towers) is written as the
            `*ForConditionalGeneration` folder, towers unchanged.
        output_dir: str or path. Folder to create; a previous export there
            is replaced, any other non-empty folder refused.
        dtype: str. "bfloat16" (default), "float16" or "float32".
        max_shard_size: int or str. Largest safetensors file, e.g. "2GB".
        merge_lora: bool. Merge LoRA into the weights (True), or write the
            frozen base weights a PEFT adapter applies to (False).
        chat_template: str or None. Jinja chat template; None for Gemma's.
        progress: callable or None. Wraps the tensor iterator, e.g.
            `functools.partial(tqdm.tqdm, total=n)`, to show progress.
        overwrite: bool. Also replace a non-empty folder that is not an export.

    Returns:
        str, the absolute path of the folder.

    Example:
    >>> import tempfile, transformers
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma3")
    >>> folder = export_merged(lm, tempfile.mkdtemp() + "/hf", dtype="float32")
    >>> type(transformers.AutoModelForCausalLM.from_pretrained(folder)).__name__
    'Gemma3ForCausalLM'
    """
    backbone = causal_lm.backbone
    tokenizer = causal_lm.preprocessor.tokenizer
    config = hf_config(backbone, tokenizer, dtype=dtype)
    with atomic_folder(output_dir, overwrite=overwrite) as scratch:
        tensors = hf_tensors(backbone, merge_lora=merge_lora)
        if progress is not None:
            tensors = progress(tensors)
        write_sharded(tensors, scratch, dtype=dtype, max_shard_size=max_shard_size)
        write_json_atomic(os.path.join(scratch, HF_CONFIG), config)
        write_tokenizer_files(tokenizer, scratch, chat_template=chat_template)
    return os.path.abspath(os.fspath(output_dir))
