"""A Keras Gemma causal LM -> a verified GGUF folder for llama.cpp and Ollama.

    OUTPUT_DIR/
        NAME-TYPE.gguf      LoRA merged; llama.cpp's converter layout (gguf_writer)
        Modelfile           Ollama: FROM ./NAME-TYPE.gguf, chat template, stops
        verification.json   the read-back check (gguf_verify)

The weights go through a float32 merged folder (`export_merged`, in a
scratch folder beside OUTPUT_DIR, deleted after): the GGUF is written from
it as llama.cpp's converter would write it, and it is the config and
tokenizer the read-back check uses. The folder appears only when complete.
"""

import os
import shutil

from kerasgemma.atomic import write_text_atomic
from kerasgemma.export.folder import atomic_folder, scratch_folder
from kerasgemma.export.gguf_layout import GGUF_TYPES, gguf_architecture
from kerasgemma.export.gguf_verify import verify_gguf
from kerasgemma.export.gguf_writer import write_gguf
from kerasgemma.export.hf_config import hf_config
from kerasgemma.export.merged import export_merged
from kerasgemma.export.modelfile import modelfile
from kerasgemma.export.tokenizer_files import stop_token_ids, turn_markers
from kerasgemma.files import VERIFICATION_REPORT

MODELFILE = "Modelfile"


def gguf_file_name(name, gguf_type):
    """`NAME-TYPE.gguf`, llama.cpp's usual spelling of the type.

    Example:
    >>> gguf_file_name("gemma3-270m-zh", "q8_0")
    'gemma3-270m-zh-Q8_0.gguf'
    """
    return f"{name}-{GGUF_TYPES[gguf_type][0]}.gguf"


def export_gguf(
    causal_lm,
    output_dir,
    gguf_type="f16",
    name="model",
    verify=True,
    max_new_tokens=16,
    atol=None,
    prompts=None,
    progress=None,
    overwrite=False,
    log=print,
):
    """Write `causal_lm` (LoRA merged) as a GGUF + Ollama Modelfile, checked against Keras.

    Args:
        causal_lm: a keras-hub Gemma 1-3 text causal LM, with or without LoRA.
            Gemma 4 and models with vision/audio towers are refused (one line).
        output_dir: str. Folder to create (an earlier export there is replaced).
        gguf_type: str. "f16" (default), "bf16", "q8_0" or "f32".
        name: str. File stem and `general.name`.
        verify: bool. Read the file back and compare (`verify_gguf`).
        max_new_tokens, atol, prompts: passed to `verify_gguf`.
        progress: callable or None. Wraps the tensor iterators (tqdm).
        overwrite: bool. Also replace a non-empty folder no export wrote.
        log: callable for one-line status messages.

    Returns:
        `(path of the .gguf, GGUFReport or None)`.

    Example:
    >>> import tempfile
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> out = tempfile.mkdtemp() + "/gguf"
    >>> path, report = export_gguf(build_tiny_causal_lm("gemma"), out, max_new_tokens=2, log=lambda _: None)
    >>> os.path.basename(path), report.passed, sorted(os.listdir(out))[1:]
    ('model-F16.gguf', True, ['Modelfile', 'model-F16.gguf', 'verification.json'])
    """
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type must be one of {sorted(GGUF_TYPES)}, got {gguf_type!r}.")
    tokenizer = causal_lm.preprocessor.tokenizer
    gguf_architecture(hf_config(causal_lm.backbone, tokenizer))  # refuse Gemma 4 etc. before any work
    file_name = gguf_file_name(name, gguf_type)
    scratch = scratch_folder(output_dir, "gguf")
    try:
        log("writing the float32 merged folder the GGUF is converted from")
        folder = export_merged(causal_lm, os.path.join(scratch, "hf"), dtype="float32", progress=progress)
        with atomic_folder(output_dir, overwrite=overwrite) as target:
            log(f"writing {gguf_type} GGUF {os.path.join(output_dir, file_name)}")
            write_gguf(folder, os.path.join(target, file_name), gguf_type, name=name, progress=progress)
            stops = [tokenizer.id_to_token(i) for i in stop_token_ids(tokenizer)]
            write_text_atomic(os.path.join(target, MODELFILE),
                              modelfile(file_name, turn_markers(tokenizer), stops))
            report = None
            if verify:
                log("verifying: tensors, tokenizer, logits and greedy tokens read back from the GGUF")
                report = verify_gguf(causal_lm, os.path.join(target, file_name), folder, gguf_type,
                                     prompts=prompts, max_new_tokens=max_new_tokens, atol=atol,
                                     report_dir=target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # The report names the scratch path it checked; point it at the final file.
    path = os.path.join(os.path.abspath(output_dir), file_name)
    if report is not None:
        report.gguf_file = path
        write_text_atomic(os.path.join(output_dir, VERIFICATION_REPORT), report.to_json() + "\n")
    return path, report
