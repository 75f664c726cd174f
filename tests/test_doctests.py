"""Every docstring example in the package runs (so documentation cannot drift from the code)."""

import doctest
import importlib
import pkgutil

import pytest

import kerasgemma

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(kerasgemma.__path__, prefix="kerasgemma.")
    if not info.name.endswith("__main__")
)

# Examples that export a model to a Hugging Face folder and load it in
# transformers / mlx-lm. `make test` runs them; `make test-fast` skips them,
# as tests/test_export_*.py and test_convert_script.py cover the same code.
HF_EXPORT_EXAMPLES = {
    "kerasgemma.export",
    "kerasgemma.export.adapter",
    "kerasgemma.export.merged",
    "kerasgemma.export.mlx_check",
    "kerasgemma.export.pipeline",
    "kerasgemma.export.verify",
}


# Examples that compile a generate function, run training steps, or run a
# model op by op (10 s and more on 2 CPU cores); test_generate.py,
# test_train_*.py and test_data_packing.py cover the same code fast.
COMPILING_EXAMPLES = {"kerasgemma.attention", "kerasgemma.evaluation", "kerasgemma.generation", "kerasgemma.streaming",
                      "kerasgemma.training.loop"}
SLOW_EXAMPLES = HF_EXPORT_EXAMPLES | COMPILING_EXAMPLES


def test_slow_examples_are_modules():
    assert SLOW_EXAMPLES <= set(MODULES)


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_EXAMPLES else name for name in MODULES],
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
