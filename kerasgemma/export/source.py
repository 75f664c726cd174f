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
import json
import os

from kerasgemma.errors import UserError
from kerasgemma.files import CHECKPOINTS_DIR
from kerasgemma.files import LORA_SETTINGS as LORA_SETTINGS_NAME
from kerasgemma.files import LORA_WEIGHTS as LORA_WEIGHTS_NAME
from kerasgemma.files import METRICS_JSONL as METRICS_NAME
from kerasgemma.files import RUN_CONFIG as RUN_CONFIG_NAME
from kerasgemma.model import enable_lora, load_causal_lm, resolve_lora_targets


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


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def training_summary(run_dir):
    """Steps, tokens and first/last losses from a run's `metrics.jsonl`, or None.

    Example:
    >>> import tempfile
    >>> training_summary(tempfile.mkdtemp()) is None
    True
    """
    from kerasgemma.train.metrics import read_jsonl

    path = os.path.join(run_dir, METRICS_NAME)
    if not os.path.isfile(path):
        return None
    records = read_jsonl(path)
    summary = {
        "steps": max((r.get("step", 0) for r in records), default=0),
        "tokens": sum(r.get("tokens", 0) for r in records),
    }
    for key in ("train_loss", "val_loss"):
        values = [r[key] for r in records if key in r]
        if values:
            summary[key] = {"first": values[0], "last": values[-1]}
    return summary


def is_run_folder(path):
    """True if `path` holds a trained LoRA run (`lora.json` + `adapter.lora.h5`).

    Example:
    >>> import tempfile
    >>> is_run_folder(tempfile.mkdtemp())
    False
    """
    return os.path.isfile(os.path.join(path, LORA_SETTINGS_NAME)) and os.path.isfile(
        os.path.join(path, LORA_WEIGHTS_NAME)
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
    config = os.path.join(path, RUN_CONFIG_NAME)
    if is_run_folder(path) or not os.path.isfile(config):
        return False
    try:
        return {"preset", "lora_rank"} <= set(_read_json(config))
    except (ValueError, TypeError):
        return False


def load_unfinished_run(run_dir, log=print):
    """The model of an unfinished run at its newest good checkpoint, and the LoRA settings.

    Raises `UserError` saying what is missing when no checkpoint is usable.
    """
    from kerasgemma.config import TrainConfig
    from kerasgemma.train import checkpoint

    config = TrainConfig.from_file(os.path.join(run_dir, RUN_CONFIG_NAME), allow_unknown_keys=True)
    latest = checkpoint.latest_good_checkpoint(run_dir)
    if latest is None:
        raise UserError(
            f"{run_dir}: the run did not finish (no {LORA_WEIGHTS_NAME}) and has no usable checkpoint in "
            f"{CHECKPOINTS_DIR}/; continue it with `kerasgemma resume {run_dir}`."
        )
    saved = checkpoint.load_checkpoint(latest)
    causal_lm = load_causal_lm(config.preset, dtype="float32")
    settings = {
        "rank": config.lora_rank,
        "alpha": config.lora_alpha if config.lora_alpha is not None else config.lora_rank,
        "targets": resolve_lora_targets(config.lora_targets),
    }
    enable_lora(causal_lm, settings["rank"], settings["alpha"], settings["targets"])
    variables = causal_lm.trainable_variables
    shapes = [tuple(variable.shape) for variable in variables]
    if shapes != [value.shape for value in saved["trainable"]]:
        raise UserError(f"{latest}: its arrays do not fit the LoRA settings of {run_dir}/{RUN_CONFIG_NAME}.")
    for variable, value in zip(variables, saved["trainable"]):
        variable.assign(value)
    log(f"{run_dir} did not finish (no {LORA_WEIGHTS_NAME}): exporting checkpoint {latest.name} "
        f"(step {saved['progress']['step']})")
    return causal_lm, config, settings, latest


def lora_settings(lora_path, rank=None, alpha=None, targets=None):
    """LoRA rank/alpha/targets for `lora_path`: arguments over its `lora.json`.

    Args:
        lora_path: str. A `.lora.h5` file.
        rank, alpha, targets: overrides; None keeps the `lora.json` value
            (rank: the file's own rank; alpha: rank; targets: query, value).

    Example:
    >>> import tempfile
    >>> lora_settings(tempfile.mkdtemp() + "/x.lora.h5", rank=4)
    {'rank': 4, 'alpha': 4, 'targets': ['query', 'value']}
    """
    settings_path = os.path.join(os.path.dirname(os.path.abspath(lora_path)), LORA_SETTINGS_NAME)
    saved = _read_json(settings_path) if os.path.isfile(settings_path) else {}
    if rank is None:
        rank = saved.get("rank") or _stored_rank(lora_path)
    alpha = alpha if alpha is not None else saved.get("alpha", rank)
    if targets is None:
        targets = saved.get("targets", ["query", "value"])
    elif isinstance(targets, str):
        targets = [name for name in targets.split(",") if name]
    return {"rank": int(rank), "alpha": alpha, "targets": list(targets)}


def _stored_rank(lora_path):
    import h5py

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
        lora = os.path.join(run_dir, LORA_WEIGHTS_NAME)
        source = _read_json(os.path.join(run_dir, LORA_SETTINGS_NAME))["preset"]
        if os.path.isfile(os.path.join(run_dir, RUN_CONFIG_NAME)):
            run_config = _read_json(os.path.join(run_dir, RUN_CONFIG_NAME))
        training = training_summary(run_dir)
    causal_lm = load_causal_lm(source, dtype="float32")
    if weights is not None:
        _load_weights(causal_lm, weights)
    settings = None
    if lora is not None:
        settings = lora_settings(lora, lora_rank, lora_alpha, lora_targets)
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
