"""What the notebooks call around a run: run folders that survive a disconnect, secrets, push
checks before training, Kaggle Models upload (against a local stand-in), base model and dataset
in the model card.

The Kaggle stand-in serves the calls `kagglehub.model_upload` makes (kagglehub 1.0.2 through
kagglesdk): `POST /api/v1/models.ModelApiService/GetModel` (404: the model is new),
`.../CreateModel`, `POST /api/v1/blobs.BlobApiService/StartBlobUpload` (answers with an upload
URL on the stand-in), `PUT` of each file there, and `.../CreateModelInstance`. kagglesdk's
`LOCALHOST` environment is pointed at it, so no call leaves the machine.
"""

import base64
import http.server
import json
import os
import sys
import threading
import types

import pytest
from helpers import JsonReplyHandler
from helpers import fake_export

from kerasgemma import hub
from kerasgemma import notebook
from kerasgemma.errors import UserError
from kerasgemma.export.base_model import HF_BASE_MODELS
from kerasgemma.export.base_model import hf_base_model
from kerasgemma.files import EXPORT_MARKER
from kerasgemma.files import MODEL_CARD
from kerasgemma.kaggle_models import push_to_kaggle

KAGGLE_USER, KAGGLE_KEY = "standin-user", "kaggleSECRETkey0123456789"


class KaggleStandIn:
    """A thread serving the Kaggle API calls of `kagglehub.model_upload`; records what it got."""

    def __init__(self):
        self.models, self.instances, self.blobs, self.authorizations = {}, [], {}, []
        standin = self

        class Handler(JsonReplyHandler):

            def do_PUT(self):
                standin.blobs[self.path] = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._reply({})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                standin.authorizations.append(self.headers.get("Authorization"))
                method = self.path.rsplit("/", 1)[-1]
                if method == "GetModel":
                    key = f"{request['ownerSlug']}/{request['modelSlug']}"
                    if key not in standin.models:
                        return self._reply({"code": 404, "message": "not found"}, 404)
                    return self._reply({"id": 1})
                if method == "CreateModel":
                    standin.models[f"{request['ownerSlug']}/{request['slug']}"] = request
                    return self._reply({"id": 1, "url": "models/x"})
                if method == "StartBlobUpload":
                    token = f"blob-{len(standin.blobs) + len(standin.instances)}-{request['name']}"
                    return self._reply({"token": token, "createUrl": f"{standin.url}/upload/{token}"})
                if method == "CreateModelInstance":
                    standin.instances.append(request)
                    return self._reply({"id": 1, "url": "models/x/transformers/merged"})
                self._reply({"code": 404, "message": f"not in the stand-in: {self.path}"}, 404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kaggle(monkeypatch):
    from kagglehub import clients
    from kagglesdk import kaggle_env

    # kagglehub names the callers' libraries in its user agent by walking the stack through
    # inspect.getmodule: about 1 s per API call with TensorFlow loaded, and not what is tested.
    monkeypatch.setattr(clients, "get_user_agent", lambda: "kagglehub/test")
    monkeypatch.setenv("KAGGLE_USERNAME", KAGGLE_USER)
    monkeypatch.setenv("KAGGLE_KEY", KAGGLE_KEY)
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    with KaggleStandIn() as server:
        monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, server.url)
        yield server


def test_push_to_kaggle_uploads_the_verified_folder(kaggle, tmp_path, capfd):
    folder = fake_export(tmp_path / "hf")
    hub.write_model_card(folder, "google/gemma-2b", run_config={"data": "hub", "subset": "baike"})
    open(os.path.join(folder, EXPORT_MARKER), "w").close()
    url = push_to_kaggle(folder, "me/gemma-zh", kind="adapter", version_notes="test")  # OWNER/MODEL + the kind
    assert url.endswith("/models/me/gemma-zh/transformers/adapter")
    assert kaggle.models["me/gemma-zh"]["isPrivate"] is True
    [instance] = kaggle.instances
    assert instance["body"]["instanceSlug"] == "adapter" and instance["body"]["licenseName"] == "Gemma"
    uploaded = {token.split("-", 2)[2]: data for token, data in
                ((path.rsplit("/", 1)[-1], data) for path, data in kaggle.blobs.items())}
    assert set(uploaded) == {"config.json", "verification.json", MODEL_CARD}  # not the export marker
    assert b"Hello-SimpleAI/HC3-Chinese" in uploaded[MODEL_CARD]
    expected = "Basic " + base64.b64encode(f"{KAGGLE_USER}:{KAGGLE_KEY}".encode()).decode()
    assert kaggle.authorizations and set(kaggle.authorizations) == {expected}
    assert KAGGLE_KEY not in capfd.readouterr().out + capfd.readouterr().err


def test_push_to_kaggle_refuses_unverified_and_missing_credentials(kaggle, tmp_path, monkeypatch):
    folder = fake_export(tmp_path / "bad", passed=False)
    with pytest.raises(hub.VerificationError):
        push_to_kaggle(folder, "me/bad/transformers/merged")
    assert not kaggle.models and not kaggle.blobs
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-json"))
    with pytest.raises(UserError, match="no Kaggle credentials"):
        push_to_kaggle(fake_export(tmp_path / "good"), "me/good/transformers/merged")
    assert not kaggle.models


def test_prepare_notebook_returns_the_runs_folder_and_stops_a_push_without_a_token(tmp_path, monkeypatch, capsys):
    assert notebook.prepare_notebook(str(tmp_path / "runs")) == str(tmp_path / "runs")
    assert "no push requested" in capsys.readouterr().out
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    with pytest.raises(UserError, match="hf_repo_id = 'me/gemma-zh', but no Hugging Face token"):
        notebook.prepare_notebook(str(tmp_path / "runs"), hf_repo_id="me/gemma-zh")


def test_check_outputs_ready_before_training(standin, tmp_path, monkeypatch, capsys):
    """The token is found and checked (never printed); without one, a requested push stops the notebook."""
    notebook.check_outputs_ready("me/gemma-zh", endpoint=standin.url)
    out = capsys.readouterr().out
    assert "token found (not shown)" in out and os.environ["HF_TOKEN"] not in out
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    with pytest.raises(UserError, match="hf_repo_id = 'me/gemma-zh', but no Hugging Face token"):
        notebook.check_outputs_ready("me/gemma-zh", endpoint=standin.url)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-json"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="no Kaggle credentials"):
        notebook.check_outputs_ready(kaggle_model="me/gemma-zh")
    with pytest.raises(UserError, match="expected OWNER/MODEL"):
        notebook.check_outputs_ready(kaggle_model="gemma-zh")
    notebook.check_outputs_ready()
    assert "no push requested" in capsys.readouterr().out


def fake_colab(monkeypatch, secrets=None, refuse=False):
    """`google.colab.drive` and `google.colab.userdata` as on Colab; returns the mount calls."""
    mounts = []

    def mount(mountpoint):
        if refuse:
            raise ValueError("mount failed")
        mounts.append(mountpoint)
        os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)

    def get(name):
        if name not in (secrets or {}):
            raise KeyError(name)  # google.colab.userdata.SecretNotFoundError in Colab
        return secrets[name]

    google, colab = types.ModuleType("google"), types.ModuleType("google.colab")
    google.__path__, colab.__path__ = [], []
    google.colab = colab
    colab.drive = types.SimpleNamespace(mount=mount)
    colab.userdata = types.SimpleNamespace(get=get)
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", colab.drive)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", colab.userdata)
    monkeypatch.delenv(notebook.KAGGLE_ENV, raising=False)
    return mounts


def test_runs_folder_on_colab_kaggle_and_elsewhere(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(notebook.KAGGLE_ENV, raising=False)
    assert notebook.runs_folder("") == "runs" and notebook.runs_folder("given") == "given"
    mounts = fake_colab(monkeypatch)
    drive = tmp_path / "drive"
    assert notebook.runs_folder("", mountpoint=str(drive)) == str(drive / "MyDrive" / "kerasgemma" / "runs")
    assert mounts == [str(drive)] and "kept after a disconnect" in capsys.readouterr().out
    assert notebook.runs_folder("", use_drive=False, mountpoint=str(drive)) == notebook.COLAB_RUNS
    assert "lost when Colab disconnects" in capsys.readouterr().out
    assert notebook.runs_folder("mine", mountpoint=str(drive)) == "mine" and len(mounts) == 1
    fake_colab(monkeypatch, refuse=True)
    with pytest.raises(UserError, match="could not mount Google Drive.*use_drive = False"):
        notebook.runs_folder("", mountpoint=str(drive))
    monkeypatch.setenv(notebook.KAGGLE_ENV, "Interactive")
    assert notebook.runs_folder("") == "/kaggle/working/runs"


def test_load_secrets_copies_without_printing(monkeypatch, capsys):
    for name in notebook.SECRETS:
        monkeypatch.delenv(name, raising=False)
    fake_colab(monkeypatch, secrets={"HF_TOKEN": "hf_colabSECRET"})
    assert notebook.load_secrets() == ["HF_TOKEN"]
    assert os.environ["HF_TOKEN"] == "hf_colabSECRET" and "hf_colabSECRET" not in capsys.readouterr().out


def test_base_model_from_preset_and_dataset_in_card(tmp_path):
    assert hf_base_model("gemma_2b_en") == "google/gemma-2b"
    assert hf_base_model("gemma3_instruct_4b_text") == "google/gemma-3-4b-it"
    assert hf_base_model("offline:gemma3_270m") == "google/gemma-3-270m"
    assert hf_base_model("kaggle://keras/gemma4/keras/gemma4_instruct_2b/2") == "google/gemma-4-E2B-it"
    assert hf_base_model("/local/preset") == "/local/preset"
    assert all(repo.startswith("google/") and repo.count("/") == 1 for repo in HF_BASE_MODELS.values())
    folder = fake_export(tmp_path / "hf")
    card = hub.model_card(folder, hf_base_model("gemma3_1b"), run_config={"data": "hub", "subset": "baike"})
    assert "base_model: google/gemma-3-1b-pt" in card and "datasets: [Hello-SimpleAI/HC3-Chinese]" in card
    assert "- data: Hello-SimpleAI/HC3-Chinese (subset baike)" in card and "data: hub" not in card
