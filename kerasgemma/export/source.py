"""Load a saved Keras checkpoint for export: preset, weights file, LoRA file, run folder.

What a user has after training is one of:
- a keras-hub preset (a Kaggle name, `hf://…`, or a folder from
  `causal_lm.save_to_preset`) — everything in one place;
- a base preset plus a full `.weights.h5` (`causal_lm.save_weights`, LoRA
  merged) or a `.lora.h5` (`backbone.save_lora_weights`, LoRA matrices only);
- a kerasgemma run folder: `adapter.lora.h5` + `lora.json` {preset, rank,
  alpha, targets}, written by `kerasgemma.run.save_lora`;
- a run folder that did not finish (killed, interrupted): its `config.json`
  and the newest good checkpoint's LoRA arrays.

A `.lora.h5` stores the rank but not alpha or the target layers, so those
come from the `lora.json` beside it when there is one, else from arguments.
Models load in float32: the export rounds to the requested dtype once, and
verification needs a float32 reference anyway.
"""

import dataclasses
import os

import h5py

from kerasgemma.atomic import read_json
from kerasgemma.config import TrainConfig
from kerasgemma.errors import UserError
from kerasgemma.files import CHECKPOINTS_DIR
from kerasgemma.files import LORA_SETTINGS
from kerasgemma.files import LORA_WEIGHTS
from kerasgemma.files import RUN_CONFIG
from kerasgemma.model import enable_lora
from kerasgemma.model import load_causal_lm
from kerasgemma.model import lora_settings
from kerasgemma.training import checkpoint
from kerasgemma.training.metrics import training_summary


@dataclasses.dataclass
class ExportSource:
    """A loaded model and where it came from (for the model card)."""

    causal_lm: object
    preset: str
    lora: dict | None = None
    lora_path: str | None = None
    weights_path: str | None = None
    run_config: dict | None = None
    training: dict | None = None


def is_run_folder(path):
    """True if `path` holds a trained LoRA run (`lora.json` + `adapter.lora.h5`).

    Example:
    >>> import tempfile
    >>> is_run_folder(tempfile.mkdtemp())
    False
    """
    return os.path.isfile(os.path.join(path, LORA_SETTINGS)) and os.path.isfile(
        os.path.join(path, LORA_WEIGHTS)
    )


def is_unfinished_run(path):
    """True if `path` is a kerasgemma run folder without its final LoRA file.

    Its `config.json` is a `TrainConfig` (a keras-hub preset's is a backbone
    config), so it is told apart from a preset folder by its keys.

    Example:
    >>> import json, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "config.json"), "w").write(json.dumps({"preset": "x", "lora_rank": 4}))
    >>> is_unfinished_run(folder)
    True
    """
    config = os.path.join(path, RUN_CONFIG)
    if is_run_folder(path) or not os.path.isfile(config):
        return False
    try:
        return {"preset", "lora_rank"} <= set(read_json(config))
    except (ValueError, TypeError):
        return False


def load_unfinished_run(run_dir, log=print):
    """The model of an unfinished run at its newest good checkpoint, and the LoRA settings.

    Raises `UserError` saying what is missing when no checkpoint is usable.
    """
    config = TrainConfig.from_file(os.path.join(run_dir, RUN_CONFIG), allow_unknown_keys=True)
    latest = checkpoint.latest_good_checkpoint(run_dir)
    if latest is None:
        raise UserError(
            f"{run_dir}: the run did not finish (no {LORA_WEIGHTS}) and has no usable checkpoint in "
            f"{CHECKPOINTS_DIR}/; continue it with `kerasgemma resume {run_dir}`."
        )
    saved = checkpoint.load_checkpoint(latest)
    causal_lm = load_causal_lm(config.preset, dtype="float32")
    settings = lora_settings(config.lora_rank, config.lora_alpha, config.lora_targets)
    enable_lora(causal_lm, settings["rank"], settings["alpha"], settings["targets"])
    variables = causal_lm.trainable_variables
    shapes = [tuple(variable.shape) for variable in variables]
    if shapes != [value.shape for value in saved["trainable"]]:
        raise UserError(f"{latest}: its arrays do not fit the LoRA settings of {run_dir}/{RUN_CONFIG}.")
    for variable, value in zip(variables, saved["trainable"]):
        variable.assign(value)
    log(f"{run_dir} did not finish (no {LORA_WEIGHTS}): exporting checkpoint {latest.name} "
        f"(step {saved['progress']['step']})")
    return causal_lm, config, settings, latest


def lora_file_settings(lora_path, rank=None, alpha=None, targets=None):
    """LoRA rank/alpha/targets for `lora_path`: arguments over its `lora.json`.

    Args:
        lora_path: str. A `.lora.h5` file.
        rank, alpha, targets: overrides; None keeps the `lora.json` value
            (rank: the file's own rank; alpha: rank; targets: query, value).
            Targets take the same groups as training ("attention", "all").

    Example:
    >>> import tempfile
    >>> lora_file_settings(tempfile.mkdtemp() + "/x.lora.h5", rank=4, targets="attention")
    {'rank': 4, 'alpha': 4, 'targets': ['query', 'key', 'value', 'attention_output']}
    """
    settings_path = os.path.join(os.path.dirname(os.path.abspath(lora_path)), LORA_SETTINGS)
    saved = read_json(settings_path) if os.path.isfile(settings_path) else {}
    if rank is None:
        rank = saved.get("rank") or _stored_rank(lora_path)
    if alpha is None:
        alpha = saved.get("alpha")
    if targets is None:
        targets = saved.get("targets", "query,value")
    return lora_settings(rank, alpha, targets)


def _stored_rank(lora_path):
    with h5py.File(lora_path, "r") as f:
        return int(f["lora"]["vars"]["rank"][()]) if "vars" in f["lora"] else int(f["lora"]["rank"][()])


def load_export_source(
    source,
    lora=None,
    weights=None,
    lora_rank=None,
    lora_alpha=None,
    lora_targets=None,
    log=print,
):
    """Load a Keras Gemma checkpoint to export, in float32.

    Args:
        source: str. A preset (name, `hf://…`, folder, `tiny:*`,
            `offline:gemma3_270m`) or a run folder.
        lora: str or None. A `.lora.h5` applied on top of `source`.
        weights: str or None. A `.weights.h5` loaded into `source`'s model
            before LoRA.
        lora_rank, lora_alpha, lora_targets: LoRA settings when `lora.json`
            does not give them.
        log: callable for one-line status messages.

    Returns:
        `ExportSource`.

    Example:
    >>> source = load_export_source("tiny:gemma3")
    >>> type(source.causal_lm).__name__, source.lora
    ('Gemma3CausalLM', None)
    """
    run_config = training = None
    if os.path.isdir(source) and is_unfinished_run(source):
        if lora is not None or weights is not None:
            raise UserError(f"{source} is a run folder; it has its own LoRA weights.")
        causal_lm, config, settings, latest = load_unfinished_run(source, log=log)
        return ExportSource(causal_lm, config.preset, settings, str(latest), None, config.to_dict(),
                            training_summary(source))
    if os.path.isdir(source) and is_run_folder(source):
        if lora is not None:
            raise UserError(f"{source} is a run folder; it has its own LoRA file.")
        run_dir = source
        lora = os.path.join(run_dir, LORA_WEIGHTS)
        source = read_json(os.path.join(run_dir, LORA_SETTINGS))["preset"]
        if os.path.isfile(os.path.join(run_dir, RUN_CONFIG)):
            run_config = read_json(os.path.join(run_dir, RUN_CONFIG))
        training = training_summary(run_dir)
    causal_lm = load_causal_lm(source, dtype="float32")
    if weights is not None:
        _load_weights(causal_lm, weights)
    settings = None
    if lora is not None:
        settings = lora_file_settings(lora, lora_rank, lora_alpha, lora_targets)
        enable_lora(causal_lm, settings["rank"], settings["alpha"], settings["targets"])
        causal_lm.backbone.load_lora_weights(lora)
    return ExportSource(causal_lm, source, settings, lora, weights, run_config, training)


def _load_weights(causal_lm, path):
    # `save_weights` on the task and on the backbone nest the same variables
    # differently; accept either.
    try:
        causal_lm.load_weights(path)
    except ValueError:
        causal_lm.backbone.load_weights(path)
