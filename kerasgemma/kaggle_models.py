"""Upload an exported folder to Kaggle Models with `kagglehub.model_upload`.

Like `kerasgemma.hub.push_to_hub`: only a folder whose `verification.json`
says it passed (unless forced), and the credentials are never handled here:
kagglehub reads `KAGGLE_USERNAME`/`KAGGLE_KEY` (or `KAGGLE_API_TOKEN`, or
`~/.kaggle/kaggle.json`, or `kagglehub.login()`) itself, so they are not in
our arguments, messages, logs or files. A handle is
`OWNER/MODEL/FRAMEWORK/VARIATION`; kagglehub creates the model (private)
when it is missing, then the variation, or a new version of an existing one.
"""

from kerasgemma.errors import UserError
from kerasgemma.files import EXPORT_MARKER
from kerasgemma.hub import check_verified

# The license Kaggle's model pages list for Gemma derivatives (the Gemma Terms
# of Use). Not checked here against Kaggle's live license list: pass another
# `license_name` if Kaggle refuses it.
GEMMA_KAGGLE_LICENSE = "Gemma"
# kagglehub's framework name for what `kerasgemma export` writes (merged
# folders and PEFT adapters both load through transformers).
FRAMEWORK = "transformers"


def kaggle_handle(owner_and_model, kind="merged"):
    """The full Kaggle Models handle for an export, from "OWNER/MODEL" (or a full handle).

    The variation is the export's kind ("merged" or "adapter"), so both can
    live under one model.

    Example:
    >>> kaggle_handle("me/gemma-2b-hc3"), kaggle_handle("me/gemma-2b-hc3", "adapter")
    ('me/gemma-2b-hc3/transformers/merged', 'me/gemma-2b-hc3/transformers/adapter')
    >>> kaggle_handle("me/gemma-2b-hc3/transformers/v1")
    'me/gemma-2b-hc3/transformers/v1'
    >>> kaggle_handle("gemma-2b-hc3")
    Traceback (most recent call last):
    ...
    kerasgemma.errors.UserError: Kaggle model 'gemma-2b-hc3': expected OWNER/MODEL or OWNER/MODEL/FRAMEWORK/VARIATION
    """
    parts = owner_and_model.strip("/").split("/")
    if len(parts) == 2 and all(parts):
        return f"{parts[0]}/{parts[1]}/{FRAMEWORK}/{kind}"
    if len(parts) == 4 and all(parts):
        return "/".join(parts)
    raise UserError(f"Kaggle model {owner_and_model!r}: expected OWNER/MODEL or OWNER/MODEL/FRAMEWORK/VARIATION")


def has_kaggle_credentials():
    """Whether kagglehub finds Kaggle credentials (they are not returned or shown)."""
    from kagglehub.config import get_kaggle_credentials

    return get_kaggle_credentials() is not None


def check_kaggle_credentials():
    """Refuse an upload up front when kagglehub has no Kaggle credentials."""
    if not has_kaggle_credentials():
        raise UserError("no Kaggle credentials for the Kaggle Models upload: set the KAGGLE_USERNAME and KAGGLE_KEY "
                        "secrets (or call kagglehub.login()).")


def push_to_kaggle(folder, handle, kind="merged", license_name=GEMMA_KAGGLE_LICENSE, version_notes=None,
                   force=False):
    """Upload `folder` to Kaggle Models as `handle`; returns the model's Kaggle URL.

    Args:
        folder: str. An exported folder with its model card.
        handle: str. "OWNER/MODEL", completed by `kind` (`kaggle_handle`),
            or a full "OWNER/MODEL/FRAMEWORK/VARIATION".
        kind: str. The export's kind ("merged" or "adapter"): the variation
            of an "OWNER/MODEL" handle.
        license_name: str. Kaggle's name of the license (Gemma's by default).
        version_notes: str or None. Notes of the new version.
        force: bool. Upload even if verification failed or was skipped.
    """
    import kagglehub
    from kagglehub.handle import parse_model_handle

    if not force:
        check_verified(folder)
    check_kaggle_credentials()
    parsed = parse_model_handle(kaggle_handle(handle, kind))
    kagglehub.model_upload(
        str(parsed),
        str(folder),
        license_name=license_name,
        version_notes=version_notes or "Uploaded by kerasgemma",
        ignore_patterns=[EXPORT_MARKER],  # ours, for replacing the folder safely; not the model's
    )
    return parsed.to_url()
