# Two entry points for a fresh machine (see README):
#   make demo   create .venv, then fine-tune + export + verify on the embedded default
#   make test   create .venv, then run the whole test suite (CI: .ci/run)
# For developers:
#   make test-fast   the suite without tests marked slow (a few minutes)
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
export KERAS_BACKEND = jax
# Keep TensorFlow (pulled in by tensorflow-text) quiet and off the GPU.
export TF_CPP_MIN_LOG_LEVEL = 3
# pytest-xdist: one test process per core, at most 4 (each compiles and holds
# its own tiny models; the real-model tests hold ~3 GB each). loadgroup hands
# out a test (or an `xdist_group` of tests sharing a costly fixture) at a time,
# so no worker is left with a queue of slow ones.
TEST_WORKERS ?= -n auto --maxprocesses=4 --dist loadgroup

.PHONY: demo test test-fast env clean

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kerasgemma demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(TEST_WORKERS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(TEST_WORKERS) -m "not slow"

clean:
	rm -rf $(VENV) runs
