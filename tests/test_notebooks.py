"""The notebooks in `notebooks/`: committed without outputs, and run end to end on CPU.

Each notebook is executed as committed, through papermill, with its `parameters`
cell overridden for a CPU: the tiny random Gemma 3, the bundled HC3 `baike`
sample, a few steps, no install, no push. Any cell error fails the test, and the
export verification the notebook ran must have passed. The same library calls on
the real Gemma 3 270M (the Colab notebook's CPU preset) run in
tests/test_demo.py::test_demo_real_gemma3_270m_learns; running the notebook on
it too cost 5 minutes of CI for no other code.

The kernel is this interpreter, through a kernelspec written for the test
(`JUPYTER_PATH` comes before the user's own kernels), so the notebook sees the
same installed packages as pytest on a machine where only
`pip install -r requirements.txt && pip install -e .` ran.
"""

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from helpers import REPO_ROOT

ROOT = REPO_ROOT
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SAMPLE_DATA = ROOT / "kerasgemma" / "data" / "sample" / "hc3_baike_sample.jsonl"
KERNEL_NAME = "kerasgemma-test"
PARAMETER_NAMES = {
    "install_package",
    "preset",
    "base_model",
    "data",
    "max_steps",
    "sequence_length",
    "batch_size",
    "export_dtype",
    "hf_repo_id",
    "output_dir",
}


def cpu_parameters(output_dir, preset="tiny:gemma3"):
    return dict(
        install_package=False,
        preset=preset,
        base_model=preset,  # only named in the model card
        data=str(SAMPLE_DATA),
        sequence_length=64,
        batch_size=2,
        max_steps=3,
        warmup_steps=1,
        learning_rate=1e-2,
        export_dtype="float32",
        hf_repo_id="",
        output_dir=str(output_dir),
    )


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
def test_parameters_cell(path):
    """One `parameters` cell, before any cell that imports kerasgemma, naming every injected setting."""
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    tagged = [i for i, cell in enumerate(code) if "parameters" in cell.metadata.get("tags", [])]
    assert tagged == [0], f"{path.name}: the first code cell must be the only one tagged 'parameters'"
    names = {line.split("=")[0].strip() for line in code[0].source.splitlines() if "=" in line}
    assert PARAMETER_NAMES | set(cpu_parameters("x")) <= names, sorted(PARAMETER_NAMES - names)
    assert "install_package" in code[1].source and "%pip install" in code[1].source


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernelspec for this interpreter, and an environment without Hub credentials."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kerasgemma test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The checkout, whether or not `pip install -e .` ran (the kernel starts in a temporary folder).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    return KERNEL_NAME


def execute(path, kernel_name, work_dir, parameters):
    """Run `path` with papermill; returns (executed notebook, seconds)."""
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


def check_run(notebook, output_dir):
    """The run folder the notebook made holds a passed verification, a loss plot and LoRA weights."""
    run_dirs = [path for path in Path(output_dir).iterdir() if path.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    verification = json.loads((run_dir / "hf-merged" / "verification.json").read_text())
    assert verification["passed"], verification
    assert "**Passed**" in (run_dir / "hf-merged" / "README.md").read_text(), "model card without the verification"
    for name in ("config.json", "data_report.json", "metrics.jsonl", "loss.png", "adapter.lora.h5", "lora.json"):
        assert (run_dir / name).is_file(), name
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), "no inline loss plot"
    text = "".join(output.get("text", "") for output in outputs)
    assert "verification PASSED" in text
    assert "push skipped" in text


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_on_cpu(path, kernel, tmp_path):
    output_dir = tmp_path / "runs"
    notebook, seconds = execute(path, kernel, tmp_path, cpu_parameters(output_dir))
    check_run(notebook, output_dir)
