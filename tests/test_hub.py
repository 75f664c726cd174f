"""Hub push against a local stand-in: model card, privacy, refusal unless verified, token hygiene.

The stand-in implements the three Hub calls `HfApi.create_repo` and
`HfApi.upload_folder` make (huggingface_hub 2.4, files small enough to be
"regular" git blobs, so no LFS/xet storage is involved):
`POST /api/repos/create`, `POST /api/validate-yaml` (a README.md's
metadata; checked here only for YAML syntax), `POST
/api/models/{repo}/preupload/{rev}` and `POST /api/models/{repo}/commit/{rev}`
(NDJSON, base64 file contents).
"""

import dataclasses
import os

import pytest

from helpers import TOKEN, fake_export

from kerasgemma import hub
from kerasgemma.export.verify import VerificationReport
from kerasgemma.files import VERIFICATION_REPORT as REPORT_FILE



def test_push_creates_private_repo_with_model_card(standin, tmp_path):
    folder = fake_export(tmp_path / "hf")
    hub.write_model_card(folder, "google/gemma-3-270m", lora={"rank": 4, "alpha": 8, "targets": ["query", "value"]},
                         run_config={"data": "hc3_baike.jsonl", "learning_rate": 1e-4},
                         training={"steps": 10, "tokens": 1000, "val_loss": {"first": 3.0, "last": 2.0}},
                         repo_id="me/gemma-zh")
    url = hub.push_to_hub(folder, "me/gemma-zh", endpoint=standin.url)
    assert url.endswith("me/gemma-zh")
    repo = standin.repos["me/gemma-zh"]
    assert repo["visibility"] == "private"
    assert set(repo["files"]) == {"README.md", "config.json", REPORT_FILE}
    assert standin.metadata[0]["license"] == "gemma"
    card = repo["files"]["README.md"].decode()
    for expected in ("license: gemma", "base_model: google/gemma-3-270m", "hc3_baike.jsonl", "rank 4, alpha 8",
                     "val loss: 3.0000 → 2.0000", "**Passed**", "1e-06", 'pipeline("text-generation", '
                     'model="me/gemma-zh")', "Gemma Terms of Use"):
        assert expected in card, expected
    # The token was sent to the server and nowhere else.
    assert standin.authorizations and all(a == f"Bearer {TOKEN}" for a in standin.authorizations)
    for name in os.listdir(folder):
        assert TOKEN not in open(os.path.join(folder, name), encoding="utf-8").read()


def test_public_flag(standin, tmp_path):
    hub.push_to_hub(fake_export(tmp_path / "hf"), "me/open", private=False, endpoint=standin.url)
    assert standin.repos["me/open"]["visibility"] == "public"


@pytest.mark.parametrize("state", ["failed", "unverified"])
def test_refuses_unless_verified_or_forced(standin, tmp_path, state):
    folder = fake_export(tmp_path / "hf", passed=False)
    if state == "unverified":
        os.remove(os.path.join(folder, REPORT_FILE))
    with pytest.raises(hub.VerificationError, match="force"):
        hub.push_to_hub(folder, "me/bad", endpoint=standin.url)
    assert standin.repos == {} and standin.authorizations == []
    hub.push_to_hub(folder, "me/bad", force=True, endpoint=standin.url)
    assert "config.json" in standin.repos["me/bad"]["files"]


def test_model_card_reports_failure_and_adapter_usage(tmp_path):
    folder = fake_export(tmp_path / "adapter", passed=False)
    open(os.path.join(folder, "adapter_config.json"), "w").write("{}")
    card = hub.model_card(folder, "/local/base/path")
    assert "**FAILED**" in card and "Failure: max |Δlogits| 0.5" in card
    assert "PeftModel.from_pretrained" in card and "library_name: peft" in card
    assert "base_model:" not in card  # a local path is not a Hub repo id
    assert dataclasses.is_dataclass(VerificationReport)
