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


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
