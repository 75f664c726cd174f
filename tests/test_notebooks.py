"""The notebooks in `notebooks/`: committed without outputs, installed and run end to end on CPU.

Each notebook is executed as committed, through papermill, with its `parameters` cell
overridden for a CPU: the tiny random Gemma 3, the bundled HC3 `baike` sample, a few steps
with an evaluation and a sample answer at each, no push. Its install cell runs too: the
kernel is a throwaway virtual environment without kerasgemma that sees the test venv's other
packages (a `.pth` line; pip's index is switched off, so nothing is downloaded), and the
cell installs kerasgemma into it from a copy of this checkout's files (the Kaggle notebook
finds the checkout it sits in with `package_source = ""`, the Colab notebook is given the
folder), as a user's notebook kernel would. Any cell error fails the test, and the export
verifications the notebook ran must have passed. The same library calls on the real Gemma 3
270M (the Colab notebook's CPU preset) run in
tests/test_demo.py::test_demo_real_gemma3_270m_learns.

`test_resume_after_disconnect` runs the library cells of a notebook (settings, data, run,
train) in one kernel that dies (`os._exit`) right after its step-2 checkpoint, then the same
cells in a fresh kernel with `resume_dir` set: training continues from that checkpoint.
"""

import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import nbformat
import pytest
from helpers import REPO_ROOT

import kerasgemma as kg
from kerasgemma.files import METRICS_JSONL
from kerasgemma.files import SAMPLES
from kerasgemma.training import checkpoint

ROOT = REPO_ROOT
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SAMPLE_DATA = ROOT / "kerasgemma" / "data" / "sample" / "hc3_baike_sample.jsonl"
KERNEL_NAME = "kerasgemma-test"
PLACEHOLDER = "your-github-user"
PARAMETER_NAMES = {
    "package_source",
    "install_package",
    "package_extras",
    "preset",
    "base_model",
    "data",
    "max_steps",
    "eval_every",
    "save_every",
    "max_new_tokens",
    "sequence_length",
    "batch_size",
    "export_dtype",
    "push_merged",
    "push_adapter",
    "hf_repo_id",
    "kaggle_model",
    "output_dir",
    "resume_dir",
}


def cpu_parameters(output_dir, preset="tiny:gemma3", **overrides):
    parameters = dict(
        install_package=True,
        package_source="",
        preset=preset,
        base_model="",  # derived from the preset (a tiny preset keeps its own name)
        data=str(SAMPLE_DATA),
        sequence_length=64,
        batch_size=2,
        max_steps=3,
        eval_every=2,
        save_every=2,
        max_new_tokens=8,
        warmup_steps=1,
        learning_rate=1e-2,
        export_dtype="float32",
        push_merged=True,
        push_adapter=True,
        hf_repo_id="",
        kaggle_model="",
        output_dir=str(output_dir),
        resume_dir="",
    )
    return {**parameters, **overrides}


def code_cells(path):
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def tagged(cells, tag):
    [cell] = [cell for cell in cells if tag in cell.metadata.get("tags", [])]
    return cell


def test_notebooks_exist():
    names = {path.name for path in NOTEBOOKS}
    assert {"kaggle_tpu_lora.ipynb", "colab_lora.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"
        assert "execution" not in cell.metadata, f"{path.name} cell {index} has execution timings"
    assert "widgets" not in notebook.metadata, f"{path.name} keeps widget state"
    assert "papermill" not in notebook.metadata, f"{path.name} is a papermill output, not the source"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_parameters_and_install_cells(path):
    """One `parameters` cell first, naming every injected setting; then the install cell, which fails loudly."""
    code = code_cells(path)
    tags = [i for i, cell in enumerate(code) if "parameters" in cell.metadata.get("tags", [])]
    assert tags == [0], f"{path.name}: the first code cell must be the only one tagged 'parameters'"
    names = {line.split("=")[0].strip() for line in code[0].source.splitlines() if "=" in line}
    assert PARAMETER_NAMES | set(cpu_parameters("x")) <= names, sorted(PARAMETER_NAMES - names)
    install = code[1].source
    assert tagged(code, "install") is code[1]
    assert "%pip" not in install and "returncode != 0" in install and "raise RuntimeError" in install
    # The same install cell in every notebook (the extras are a parameter).
    assert install == tagged(code_cells(NOTEBOOKS[0]), "install").source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_code_uses_only_the_front_door(path):
    """`import kerasgemma as kg` and its public names: no cell reaches into the package's modules."""
    for index, cell in enumerate(code_cells(path)):
        for line in cell.source.splitlines():
            assert not re.match(r"\s*(from|import)\s+kerasgemma\.", line), f"{path.name} cell {index}: {line}"
            for name in re.findall(r"\bkg\.(\w+)", line):
                assert name in kg.__all__, f"{path.name} cell {index}: kg.{name} is not a public name"


def test_no_placeholder_repository_left():
    for path in [*NOTEBOOKS, ROOT / "notebooks" / "README.md", ROOT / "README.md"]:
        assert PLACEHOLDER not in path.read_text(encoding="utf-8"), path


def test_kaggle_notebook_targets_tpu_v5e_8():
    notebook = nbformat.read(ROOT / "notebooks" / "kaggle_tpu_lora.ipynb", as_version=4)
    assert notebook.metadata["kaggle"]["accelerator"] == "tpuV5e8"  # Kaggle's key for TPU v5e-8
    assert "TPU v5e-8" in notebook.cells[0].source


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernelspec for this interpreter, and an environment without Hub credentials."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The checkout, whether or not `pip install -e .` ran (the kernel starts in a temporary folder).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    return write_kernelspec(tmp_path, sys.executable)


def write_kernelspec(tmp_path, python):
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kerasgemma test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KERNEL_NAME


@pytest.fixture
def bare_kernel(kernel, tmp_path, monkeypatch):
    """A kernel in a new virtual environment without kerasgemma, seeing this venv's other packages.

    Installs there go through pip without an index (everything else is already installed) and
    without build isolation (setuptools comes from this venv), so they are quick and offline.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    [site_packages] = venv.glob("lib/python*/site-packages")
    # A plain path line: this venv's packages, without running their .pth files (so not the
    # editable install of kerasgemma, if there is one).
    (site_packages / "test_venv_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # pip's spelling of --no-build-isolation
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    write_kernelspec(tmp_path, venv / "bin" / "python")
    return site_packages


def copy_checkout(target):
    """The checkout's files (tracked and new, not ignored), as a clone would have them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())
    return target


def execute(path, kernel_name, work_dir, parameters):
    """Run `path` with papermill in `work_dir`; returns (executed notebook, seconds)."""
    import papermill

    output = work_dir / f"{path.stem}.executed.ipynb"
    start = time.perf_counter()
    papermill.execute_notebook(
        str(path),
        str(output),
        parameters=parameters,
        kernel_name=kernel_name,
        cwd=str(work_dir),
        progress_bar=False,
        execution_timeout=1200,
    )
    seconds = time.perf_counter() - start
    notebook = nbformat.read(output, as_version=4)
    slowest = sorted(
        ((cell.metadata.get("papermill", {}).get("duration") or 0.0, cell.source.splitlines()[-1][:50])
         for cell in notebook.cells if cell.cell_type == "code"),
        reverse=True,
    )[:6]
    print(f"{path.name}: executed in {seconds:.1f} s with preset {parameters['preset']}; slowest cells: "
          + "; ".join(f"{duration:.1f} s `{line}`" for duration, line in slowest))
    return notebook, seconds


def output_text(notebook):
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    return outputs, "".join(output.get("text", "") for output in outputs)


def check_run(notebook, output_dir, exports=("hf-merged", "hf-adapter")):
    """The run folder holds passed verifications, a loss curve of every evaluation, answers and LoRA weights."""
    run_dirs = [path for path in Path(output_dir).iterdir() if path.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    for export in exports:
        verification = json.loads((run_dir / export / "verification.json").read_text())
        assert verification["passed"], verification
        card = (run_dir / export / "README.md").read_text()
        assert "**Passed**" in card, "model card without the verification"
        assert "hc3_baike_sample.jsonl" in card
    for name in ("config.json", "data_report.json", "metrics.jsonl", "loss.png", "adapter.lora.h5", "lora.json"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / METRICS_JSONL).read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 2, 3]  # eval_every=2, and the last step
    samples = [json.loads(line) for line in (run_dir / SAMPLES).read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [2, 3] and len(samples) == 6  # 3 questions each time
    assert [c.name for c in checkpoint.list_checkpoints(run_dir)]  # save_every=2, and the last step
    outputs, text = output_text(notebook)
    assert any("image/png" in output.get("data", {}) for output in outputs), "no inline loss plot"
    assert text.count("verification PASSED") == len(exports)
    assert "no push requested" in text and "push skipped" in text
    assert "step 3 · 问 Q:" in text  # the answers of each evaluation are shown
    return run_dir, text


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_installs_and_runs_on_cpu(path, bare_kernel, tmp_path):
    """The whole notebook, its install cell included, in a kernel where kerasgemma is not installed.

    The Kaggle notebook sits in a copy of the checkout and finds it (`package_source = ""`); the
    Colab notebook is given the copy's folder. The Colab one skips the adapter (the Kaggle one
    covers it) to keep the test's time down.
    """
    checkout = copy_checkout(tmp_path / "checkout")
    output_dir = tmp_path / "runs"
    if path.stem.startswith("kaggle"):
        work_dir, parameters = checkout / "notebooks", cpu_parameters(output_dir)
        exports = ("hf-merged", "hf-adapter")
    else:
        work_dir = tmp_path
        parameters = cpu_parameters(output_dir, package_source=str(checkout), push_adapter=False)
        exports = ("hf-merged",)
    notebook, seconds = execute(path, bare_kernel and KERNEL_NAME, work_dir, parameters)
    _, text = check_run(notebook, output_dir, exports)
    assert f"installed from {checkout.as_uri()}" in text
    assert (bare_kernel / "kerasgemma" / "__init__.py").is_file()  # the kernel used the installed copy
    install = next(cell for cell in notebook.cells if "install" in cell.metadata.get("tags", []))
    print(f"install cell: {install.metadata['papermill']['duration']:.1f} s")


def run_cells(path, kernel_name, work_dir, parameters, tags, extra=()):
    """Run the parameters cells (`parameters` injected), the cells tagged `tags`, and `extra` code before the last."""
    from nbclient import NotebookClient
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    notebook = parameterize_notebook(load_notebook_node(str(path)), parameters)
    chosen = [cell for cell in notebook.cells if cell.cell_type == "code" and (
        {"parameters", "injected-parameters", *tags} & set(cell.metadata.get("tags", [])))]
    chosen[-1:-1] = [nbformat.v4.new_code_cell(source) for source in extra]
    notebook.cells = chosen
    client = NotebookClient(notebook, kernel_name=kernel_name, timeout=600,
                            resources={"metadata": {"path": str(work_dir)}})
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            started = time.perf_counter()
            try:
                client.execute_cell(cell, index)
            finally:
                print(f"{time.perf_counter() - started:5.1f} s `{cell.source.splitlines()[-1][:50]}`")
    return notebook


def test_install_cell_without_a_source_says_what_to_set(bare_kernel, tmp_path):
    """Nothing installed, no source set, no wheel, no checkout around: one clear error, raised."""
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError) as error:
        run_cells(NOTEBOOKS[0], KERNEL_NAME, tmp_path, cpu_parameters(tmp_path / "runs"), ("install",))
    assert "kerasgemma is not installed. Set package_source in the parameters cell" in str(error.value)
    assert not (bare_kernel / "kerasgemma").exists()


@pytest.mark.slow
def test_push_without_token_stops_before_training(kernel, tmp_path, monkeypatch):
    """`hf_repo_id` set and no HF_TOKEN: the settings cell fails, before any data, model or run folder."""
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    parameters = cpu_parameters(tmp_path / "runs", install_package=False, hf_repo_id="me/gemma-zh")
    with pytest.raises(CellExecutionError) as error:
        run_cells(NOTEBOOKS[0], kernel, tmp_path, parameters, ("setup", "data", "run"))
    assert "hf_repo_id = 'me/gemma-zh', but no Hugging Face token" in str(error.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_install_cell_on_a_tpu_keeps_the_images_jax(bare_kernel, tmp_path, monkeypatch):
    """The TPU branch (`TPU_NAME` set): the installed jax/jaxlib are pinned by constraints and stay as they are."""
    import importlib.metadata

    monkeypatch.setenv("TPU_NAME", "local-test")  # how the cell tells a TPU VM, besides /dev/accel* and /dev/vfio
    checkout = copy_checkout(tmp_path / "checkout")
    notebook = run_cells(NOTEBOOKS[0], KERNEL_NAME, tmp_path, cpu_parameters(tmp_path / "runs",
                         package_source=str(checkout)), ("install",))
    text = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    jax, jaxlib = importlib.metadata.version("jax"), importlib.metadata.version("jaxlib")
    assert f"TPU: keeping the image's jax=={jax}, jaxlib=={jaxlib}" in text
    assert f"installed from {checkout.as_uri()}" in text
    assert (bare_kernel / "kerasgemma" / "__init__.py").is_file()
    assert not list(bare_kernel.glob("jax-*.dist-info")) and not list(bare_kernel.glob("torch-*.dist-info"))


DISCONNECT_AFTER_STEP_2 = """
import os
_save = run.trainer.save
def save_then_disconnect():
    saved = _save()
    if run.trainer.step == 2:
        os._exit(1)  # the kernel dies, as on a disconnect, right after the step-2 checkpoint
    return saved
run.trainer.save = save_then_disconnect
"""


@pytest.mark.slow
def test_resume_after_disconnect(kernel, tmp_path):
    """Two steps, the kernel dies, a new kernel runs the resume cell: training goes on from step 2.

    Validation only at the start and the end (`eval_every=0`), so the first kernel compiles no
    generate function; the resumed one answers the sample questions at step 3.
    """
    from nbclient.exceptions import DeadKernelError

    path = ROOT / "notebooks" / "colab_lora.ipynb"
    output_dir = tmp_path / "runs"
    parameters = cpu_parameters(output_dir, install_package=False, max_steps=3, eval_every=0, save_every=1)
    with pytest.raises(DeadKernelError):
        run_cells(path, kernel, tmp_path, parameters, ("setup", "data", "run", "train"),
                  extra=[DISCONNECT_AFTER_STEP_2])
    [run_dir] = output_dir.iterdir()
    assert [c.name for c in checkpoint.list_checkpoints(run_dir)][-1].endswith("2")
    steps_before = [json.loads(line)["step"] for line in (run_dir / METRICS_JSONL).read_text().splitlines()]
    assert max(steps_before) == 2
    resumed = run_cells(path, kernel, tmp_path, {**parameters, "resume_dir": str(run_dir)}, ("setup", "run", "train"))
    text = "".join(output.get("text", "") for cell in resumed.cells for output in cell.outputs)
    assert "resuming from" in text and str(run_dir) in text
    summary = next(output["data"]["text/plain"] for output in resumed.cells[-1].outputs if "data" in output)
    assert "'step': 3" in summary
    records = [json.loads(line) for line in (run_dir / METRICS_JSONL).read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3]  # nothing lost, nothing twice
    assert [r["step"] for r in records if "val_loss" in r] == [0, 3]
    assert {json.loads(line)["step"] for line in (run_dir / SAMPLES).read_text().splitlines()} == {3}
    assert list(output_dir.iterdir()) == [run_dir]  # no new run was started
