"""A model built through `keras_nlp` (the design's name for keras-hub) trains and exports like any other.

keras-nlp 0.32 is a shim whose classes *are* keras-hub 0.32's, so nothing in
kerasgemma special-cases it; this shows it end to end, and that importing it
before choosing the backend gets a one-line explanation.
"""

import subprocess
import sys

import numpy as np
import pytest

from kerasgemma.backend import ensure_jax_backend

ensure_jax_backend()

import keras  # noqa: E402
import keras_nlp  # noqa: E402

from kerasgemma.export import export_merged  # noqa: E402
from kerasgemma.export import verify_export  # noqa: E402
from kerasgemma.forward import token_losses  # noqa: E402
from kerasgemma.model import enable_lora  # noqa: E402
from kerasgemma.tiny import build_tiny_tokenizer_proto  # noqa: E402
from kerasgemma.tiny import tiny_backbone_config  # noqa: E402


def keras_nlp_gemma():
    """A tiny `keras_nlp.models.GemmaCausalLM`, its backbone configured as `kerasgemma.tiny` does."""
    tokenizer = keras_nlp.models.GemmaTokenizer(proto=build_tiny_tokenizer_proto())
    keras.utils.set_random_seed(0)
    backbone = keras_nlp.models.GemmaBackbone(**tiny_backbone_config("gemma", tokenizer.vocabulary_size()),
                                              dtype="float32")
    preprocessor = keras_nlp.models.GemmaCausalLMPreprocessor(tokenizer=tokenizer, sequence_length=64)
    return keras_nlp.models.GemmaCausalLM(backbone=backbone, preprocessor=preprocessor)


@pytest.fixture(scope="module")
def lora_lm():
    lm = keras_nlp_gemma()
    enable_lora(lm, rank=2)
    return lm


@pytest.mark.slow  # ~20 s on 2 cores (building and running a keras_nlp model): over the fast tier's budget
def test_keras_nlp_gemma_takes_lora_and_its_loss_follows_the_adapter(lora_lm):
    lm = lora_lm
    assert lm.trainable_variables and all("lora" in variable.path for variable in lm.trainable_variables)
    batch = {"token_ids": np.array([[2, 10, 11, 12, 13]]), "target_ids": np.array([[10, 11, 12, 13, 1]]),
             "segment_ids": np.ones((1, 5), "int32")}
    before = np.asarray(token_losses(lm, batch))
    assert before.shape == (1, 5) and np.isfinite(before).all()
    for variable in lm.backbone.trainable_variables:  # a LoRA "step": B away from zero
        if "lora_kernel_b" in variable.path:
            variable.assign(np.full(variable.shape, 0.05, "float32"))
    assert not np.allclose(np.asarray(token_losses(lm, batch)), before)


@pytest.mark.slow
def test_keras_nlp_gemma_exports_a_verified_merged_folder(lora_lm, tmp_path):
    lm = lora_lm
    folder = export_merged(lm, tmp_path / "hf", dtype="float32")
    report = verify_export(lm, folder, max_new_tokens=4, check_mlx=False)
    assert report.passed and report.max_abs_logits_diff < 1e-4, report.summary()


@pytest.mark.slow
def test_keras_nlp_imported_before_the_backend_is_one_clear_line():
    code = "import keras_nlp\nimport kerasgemma"
    env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ":".join(sys.path)}  # no KERAS_BACKEND: Keras picks TensorFlow
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: Keras was imported with the 'tensorflow' backend")
    assert "(by `import keras_nlp`)" in last and "KERAS_BACKEND" in last
