"""What the notebooks need around a run on Colab and Kaggle: where runs live, secrets, push checks.

A Colab runtime loses `/content` when it disconnects, so runs go to Google
Drive there (mounted only on Colab, only when asked); Kaggle keeps
`/kaggle/working` as the notebook's output. Secrets are copied from the
notebook's secret store into the environment variables huggingface_hub and
kagglehub read, and are never printed. Whether a push can work is checked
before training, so a missing token costs a second, not a training run.

Example:
>>> prepare_notebook("my-runs")
no push requested (hf_repo_id and kaggle_model are empty)
'my-runs'
"""

import os

from kerasgemma import hub
from kerasgemma.errors import UserError
from kerasgemma.kaggle_models import check_kaggle_credentials
from kerasgemma.kaggle_models import kaggle_handle

COLAB_MOUNTPOINT = "/content/drive"
DRIVE_RUNS = os.path.join("MyDrive", "kerasgemma", "runs")
COLAB_RUNS = "/content/runs"
KAGGLE_RUNS = "/kaggle/working/runs"
# Set in every Kaggle notebook session ("Interactive" or "Batch").
KAGGLE_ENV = "KAGGLE_KERNEL_RUN_TYPE"
SECRETS = ("HF_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY")


def _colab_module(name):
    """`google.colab.<name>`, or None outside Colab."""
    try:
        module = __import__(f"google.colab.{name}", fromlist=[name])
    except ImportError:
        return None
    return module


def notebook_platform():
    """"kaggle", "colab" or "local".

    Example:
    >>> notebook_platform() in ("kaggle", "colab", "local")
    True
    """
    if os.environ.get(KAGGLE_ENV):
        return "kaggle"
    if _colab_module("drive") is not None:
        return "colab"
    return "local"


def runs_folder(output_dir="", use_drive=True, mountpoint=COLAB_MOUNTPOINT, log=print):
    """The folder runs are created under: `output_dir` if given, else one that survives a disconnect.

    Kaggle: `/kaggle/working/runs` (kept as the notebook's output). Colab:
    `MyDrive/kerasgemma/runs` on Google Drive, mounted here (the browser asks
    for access once), or `/content/runs` with `use_drive=False` (lost on a
    disconnect, and said so). Elsewhere: `runs`.
    """
    if output_dir:
        return str(output_dir)
    where = notebook_platform()
    if where == "kaggle":
        return KAGGLE_RUNS
    if where != "colab":
        return "runs"
    if not use_drive:
        log(f"runs go to {COLAB_RUNS}: they are lost when Colab disconnects (use_drive = True keeps them on Drive)")
        return COLAB_RUNS
    try:
        _colab_module("drive").mount(mountpoint)
    except Exception as error:  # noqa: BLE001 - whatever google.colab raises when access is refused
        raise UserError(f"could not mount Google Drive at {mountpoint} ({type(error).__name__}: {error}); allow "
                        "access, or set use_drive = False (runs then go to /content/runs)") from None
    folder = os.path.join(mountpoint, DRIVE_RUNS)
    log(f"runs go to Google Drive: {folder} (kept after a disconnect)")
    return folder


def _read_secret(name):
    """The value of notebook secret `name` (Kaggle or Colab), or None."""
    try:
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        pass
    else:
        try:
            return UserSecretsClient().get_secret(name)
        except Exception:  # noqa: BLE001 - not attached to this notebook
            return None
    userdata = _colab_module("userdata")
    if userdata is None:
        return None
    try:
        return userdata.get(name)
    except Exception:  # noqa: BLE001 - SecretNotFoundError, NotebookAccessError
        return None


def load_secrets(names=SECRETS):
    """Copy the notebook secrets `names` into `os.environ` (unless already set); returns the names found.

    Kaggle: Add-ons → Secrets; Colab: 🔑 Secrets. The values are never
    printed or returned.
    """
    found = []
    for name in names:
        if not os.environ.get(name):
            value = _read_secret(name)
            if value:
                os.environ[name] = value
        if os.environ.get(name):
            found.append(name)
    return found


def check_outputs_ready(hf_repo_id="", kaggle_model="", endpoint=None, log=print):
    """Before training: refuse a requested push that cannot work (no token, bad handle).

    Args:
        hf_repo_id: str. The Hub repo to push to ("" = no Hub push).
        kaggle_model: str. "OWNER/MODEL" on Kaggle Models ("" = no upload).
        endpoint: str or None. Hub URL (tests use a local stand-in).
        log: callable for one-line messages (never given a token).
    """
    if hf_repo_id:
        try:
            hub.check_token(endpoint=endpoint, log=log)
        except UserError as error:
            raise UserError(f"hf_repo_id = {hf_repo_id!r}, but {error} (notebook: add the HF_TOKEN "
                            "secret)") from None
        log(f"Hugging Face token found (not shown): will push to {hf_repo_id}")
    if kaggle_model:
        handle = kaggle_handle(kaggle_model)
        check_kaggle_credentials()
        log(f"Kaggle credentials found (not shown): will upload to {handle.rsplit('/', 2)[0]}")
    if not hf_repo_id and not kaggle_model:
        log("no push requested (hf_repo_id and kaggle_model are empty)")


def prepare_notebook(output_dir="", hf_repo_id="", kaggle_model="", use_drive=True, log=print):
    """A notebook's first step: the runs folder (`runs_folder`), secrets loaded (`load_secrets`), pushes checked.

    Args:
        output_dir: str. Where runs go; "" for the platform's folder that
            survives a disconnect.
        hf_repo_id: str. The Hub repo to push to ("" = no Hub push).
        kaggle_model: str. "OWNER/MODEL" on Kaggle Models ("" = no upload).
        use_drive: bool. On Colab, keep runs on Google Drive.
        log: callable for one-line messages (never given a token).

    Returns:
        str. The runs folder, for `TrainConfig(output_dir=...)`.
    """
    folder = runs_folder(output_dir, use_drive=use_drive, log=log)
    load_secrets()
    check_outputs_ready(hf_repo_id, kaggle_model, log=log)
    return folder
