"""A saved Keras checkpoint -> verified Hugging Face folder (-> Hub): what `kerasgemma export` does.

`convert` checks everything it can before loading a model (the output folder,
the Hub token), locks a run folder while it reads it, loads the checkpoint in
float32 (`kerasgemma.export.source`), exports and verifies it, writes the
model card and pushes a folder that passed.
"""

import contextlib
import dataclasses
import os

from kerasgemma import hub
from kerasgemma.export.base_model import hf_base_model
from kerasgemma.export.folder import check_output_dir
from kerasgemma.export.pipeline import export_and_verify
from kerasgemma.export.source import is_run_folder
from kerasgemma.export.source import is_unfinished_run
from kerasgemma.export.source import load_export_source
from kerasgemma.run_lock import run_lock


@dataclasses.dataclass
class Conversion:
    """What `convert` made: the folder, its `VerificationReport` (None without verification), the Hub URL."""

    folder: str
    report: object
    url: str | None = None

    @property
    def passed(self):
        """True unless verification ran and failed."""
        return self.report is None or self.report.passed


def convert(
    source,
    output_dir,
    lora=None,
    weights=None,
    lora_rank=None,
    lora_alpha=None,
    lora_targets=None,
    adapter_only=False,
    base_model=None,
    overwrite=False,
    push=None,
    public=False,
    force_push=False,
    hub_endpoint=None,
    log=print,
    **export_args,
):
    """Export a run folder, a preset, or a preset plus a LoRA/weights file to Hugging Face.

    Args:
        source: str. A run folder (finished, or unfinished: its newest good
            checkpoint), a keras-hub preset, `tiny:*` or `offline:gemma3_270m`.
        output_dir: str. Folder to write; an earlier export there is
            replaced, anything else needs `overwrite=True`.
        lora, weights: str or None. A `.lora.h5` / `.weights.h5` for `source`.
        lora_rank, lora_alpha, lora_targets: LoRA settings where no
            `lora.json` gives them.
        adapter_only: bool. A PEFT adapter instead of merged weights.
        base_model: str or None. The base model named in the card and the
            adapter (default: the preset's Hugging Face repo where known,
            `kerasgemma.export.base_model.hf_base_model`, else the preset).
        overwrite: bool. Replace a non-empty folder kerasgemma did not write.
        push: str or None. A Hub repo id to upload a verified folder to.
        public, force_push, hub_endpoint: see `kerasgemma.hub.push_to_hub`.
        log: callable for one-line status messages.
        **export_args: dtype, max_shard_size, verify, max_new_tokens, atol,
            check_mlx, progress (see `export_and_verify`).

    Returns:
        `Conversion`.

    Example:
    >>> import tempfile
    >>> done = convert("tiny:gemma", tempfile.mkdtemp() + "/hf", dtype="float32", max_new_tokens=2,
    ...                check_mlx=False, progress=False, log=lambda line: None)
    >>> done.passed, done.url
    (True, None)
    """
    inputs = [path for path in (source, lora, weights) if path and os.path.exists(path)]
    check_output_dir(output_dir, protect=inputs, overwrite=overwrite)
    if push:
        hub.check_token(hub_endpoint, log=log)
    is_run = os.path.isdir(source) and (is_run_folder(source) or is_unfinished_run(source))
    # A run folder is locked so that a training cannot rewrite it mid-export;
    # a read-only one (a shared copy) cannot be trained in by us, nor locked.
    lock = run_lock(source, "export") if is_run and os.access(source, os.W_OK) else contextlib.nullcontext()
    with lock:
        log(f"loading {source}")
        loaded = load_export_source(source, lora=lora, weights=weights, lora_rank=lora_rank,
                                    lora_alpha=lora_alpha, lora_targets=lora_targets, log=log)
        base_model = base_model or hf_base_model(loaded.preset)
        folder, report = export_and_verify(loaded.causal_lm, output_dir, adapter_only=adapter_only,
                                           base_model=base_model, log=log, overwrite=overwrite, **export_args)
    if report is not None:
        log(report.summary())
    hub.write_model_card(folder, base_model, lora=loaded.lora, run_config=loaded.run_config,
                         training=loaded.training, repo_id=push)
    done = Conversion(folder, report)
    if push and (done.passed or force_push):
        done.url = hub.push_to_hub(folder, push, private=not public, force=force_push, endpoint=hub_endpoint)
    return done
