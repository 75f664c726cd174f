"""Export then verify, as the CLI and the conversion script do it, with progress bars."""

import functools
import os
import shutil

from kerasgemma.export.adapter import export_adapter
from kerasgemma.export.folder import scratch_folder
from kerasgemma.export.merged import export_merged
from kerasgemma.export.quantized import add_to_report
from kerasgemma.export.quantized import export_source
from kerasgemma.export.space import check_free_space
from kerasgemma.export.space import export_bytes
from kerasgemma.export.verify import verify_adapter
from kerasgemma.export.verify import verify_merged
from kerasgemma.export.weights import hf_tensor_shapes


def _tensor_progress(causal_lm, description):
    import tqdm

    total = len(hf_tensor_shapes(causal_lm.backbone))
    return functools.partial(tqdm.tqdm, total=total, desc=description, unit="tensor")


def export_and_verify(
    causal_lm,
    output_dir,
    adapter_only=False,
    base_model=None,
    dtype="bfloat16",
    max_shard_size="2GB",
    verify=True,
    max_new_tokens=16,
    atol=1e-3,
    check_mlx=True,
    progress=True,
    log=print,
    overwrite=False,
):
    """Write a merged folder (or a PEFT adapter) and check it against `causal_lm`.

    An adapter is checked on a base folder exported to a temporary
    directory beside `output_dir` (frozen weights, `dtype`) and deleted after.
    A model with a quantized base is exported and checked through its
    dequantized float32 copy (`kerasgemma.export.quantized`).
    Before anything is written, the disk must have room for what the export
    will hold at once (`kerasgemma.export.space.export_bytes`, of that copy
    for a quantized base); else a `UserError` gives the bytes needed and
    free and the folder.

    Args:
        causal_lm: the Keras causal LM (LoRA enabled for an adapter).
        output_dir: str. Folder to write.
        adapter_only: bool. Write a PEFT adapter instead of a merged model.
        base_model: str or None. The adapter's `base_model_name_or_path`.
        dtype, max_shard_size: merged weights' dtype and shard size.
        verify: bool. Run `verify_merged` / `verify_adapter` (writes `verification.json`).
        max_new_tokens, atol, check_mlx: passed to the verification.
        progress: bool. Show a progress bar over the tensors written.
        log: callable for one-line status messages.
        overwrite: bool. Replace `output_dir` even if it is a non-empty
            folder that no export wrote (see `kerasgemma.export.folder`).

    Returns:
        `(folder, VerificationReport or None)`.

    Example:
    >>> import tempfile
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma")
    >>> folder, report = export_and_verify(lm, tempfile.mkdtemp() + "/hf", max_new_tokens=2,
    ...                                    check_mlx=False, progress=False, log=lambda _: None)
    >>> report.passed
    True
    """
    causal_lm, quantized = export_source(causal_lm, log)
    folder, report = _export_and_verify(
        causal_lm, output_dir, adapter_only, base_model, dtype, max_shard_size, verify, max_new_tokens, atol,
        check_mlx, progress, log, overwrite,
    )
    return folder, add_to_report(report, quantized)


def _export_and_verify(causal_lm, output_dir, adapter_only, base_model, dtype, max_shard_size, verify,
                       max_new_tokens, atol, check_mlx, progress, log, overwrite):
    check_free_space(output_dir, *export_bytes(causal_lm, adapter_only, dtype, verify))
    bar = _tensor_progress(causal_lm, "writing") if progress else None
    if not adapter_only:
        log(f"writing merged {dtype} folder {output_dir}")
        folder = export_merged(causal_lm, output_dir, dtype=dtype, max_shard_size=max_shard_size, progress=bar,
                               overwrite=overwrite)
        if not verify:
            return folder, None
        log("verifying with transformers" + (" and mlx-lm" if check_mlx else ""))
        return folder, verify_merged(causal_lm, folder, max_new_tokens=max_new_tokens, atol=atol,
                                     check_mlx=check_mlx)

    log(f"writing PEFT adapter {output_dir}")
    folder = export_adapter(causal_lm, output_dir, base_model_name_or_path=base_model or "base", overwrite=overwrite)
    if not verify:
        return folder, None
    # Named like the export's own scratch, so a killed run's is cleaned up too.
    scratch = scratch_folder(output_dir, "verify")
    try:
        log("writing the base folder the adapter is checked on")
        base = export_merged(causal_lm, os.path.join(scratch, "base"), dtype=dtype,
                             max_shard_size=max_shard_size, merge_lora=False, progress=bar)
        log("verifying base + adapter with transformers and PEFT")
        report = verify_adapter(causal_lm, folder, base, max_new_tokens=max_new_tokens, atol=atol)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder, report
