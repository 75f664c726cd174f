"""The real Gemma 3 270M built offline: Keras logits equal transformers'.

The preset is built once per test session in a fresh temporary cache (not
the user's ~/.cache/kerasgemma; the `offline_preset` fixture in conftest.py,
shared with the real-model demo test): CI then always exercises the whole
build from the PyPI packages, and a stale or hand-edited user cache can
neither hide a regression nor be touched by the tests. It costs about a
minute.

The reference is transformers' own GGUF loader on the same file (its own
dequantization, name mapping and 1 + w norm handling), so a mistake in our
mapping cannot cancel out. Both run in float32 (docs/facts.md#precision: compare
exports in float32).
"""

import os
import time

import keras_hub
import numpy as np
import pytest
from helpers import optimized_xla, uses_offline_gguf

import kerasgemma as kg
from kerasgemma.export.gguf_reuse import reusing_gguf_reader
from kerasgemma.export.verify import keras_forward
from kerasgemma.offline import OFFLINE_PRESET_NAME, build_offline_preset
from kerasgemma.offline.gguf_file import import_gguf_package

pytestmark = pytest.mark.slow
# One worker of `make test` runs the tests that share the Keras model and the
# transformers reference (`@uses_offline_gguf`), so each is built once; the
# GGUF round trip and the int8 training need only the preset (built once per
# session, conftest.py) and may run on another worker.


@pytest.fixture(autouse=True)
def _optimized():
    # The 270M executes more than it compiles (tests/conftest.py).
    with optimized_xla():
        yield

PROMPTS = [
    "中国的首都是",
    "<start_of_turn>user\n为什么天空是蓝色的？<end_of_turn>\n<start_of_turn>model\n",
    "The capital of France is",
    "Keras 3 支持 JAX、TensorFlow 和 PyTorch 三种后端。 def f(x):\n    return x",
    "1 2 3 4 5 6 7 8 9",
]
# Measured max |Δ| was 3.6e-5 to 1.1e-4 on logits up to ~100 in magnitude
# (float32 rounding differences between XLA and PyTorch); a wrong mapping
# (norm offset, head layout) moves logits by O(1).
LOGITS_ATOL = 1e-3


@pytest.fixture(scope="session")
def keras_lm(offline_preset):
    with optimized_xla():
        return keras_hub.models.Gemma3CausalLM.from_preset(offline_preset)


@pytest.fixture(scope="session")
def hf_reference(offline_preset, offline_gguf_reader):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = os.path.dirname(offline_preset)
    gguf_name = import_gguf_package().MODEL_NAME
    # The worker's parsed file instead of three more parses (about 25 s each).
    with reusing_gguf_reader(offline_gguf_reader):
        model = AutoModelForCausalLM.from_pretrained(cache_dir, gguf_file=gguf_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(cache_dir, gguf_file=gguf_name)
    return model.eval(), tokenizer


@uses_offline_gguf
def test_preset_is_cached(offline_preset):
    cache_dir, path = os.path.dirname(offline_preset), offline_preset
    assert path == os.path.join(cache_dir, OFFLINE_PRESET_NAME)
    start = time.perf_counter()
    assert build_offline_preset(cache_dir, progress=False) == path
    assert time.perf_counter() - start < 1.0
    size = sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(path)
        for name in names
    )
    print(f"preset size: {size / 2**20:.0f} MiB")


@uses_offline_gguf
def test_preset_config(keras_lm):
    backbone = keras_lm.backbone
    assert backbone.num_layers == 18
    assert backbone.vocabulary_size == 262144
    assert backbone.hidden_dim == 640
    assert keras_lm.preprocessor.tokenizer.start_token_id == 2
    assert keras_lm.preprocessor.tokenizer.end_token_id == 1


@pytest.fixture(scope="session")
def keras_logits(keras_lm, hf_reference):
    """Keras logits of every prompt (by prompt), from one compiled forward (`keras_forward`).

    Every prompt is right-padded to the longest one's length, so the 270M's
    forward compiles once instead of an eager forward per prompt length
    (about 10 s each).
    """
    _, tokenizer = hf_reference
    token_ids = {prompt: tokenizer(prompt).input_ids for prompt in PROMPTS}
    with optimized_xla():
        forward = keras_forward(keras_lm, max(map(len, token_ids.values())))
        return {prompt: forward(ids) for prompt, ids in token_ids.items()}


@uses_offline_gguf
@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(keras_lm, hf_reference, keras_logits, prompt):
    import torch

    model, tokenizer = hf_reference
    token_ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(token_ids).logits[0].numpy()
    keras_ids = keras_lm.preprocessor.tokenizer(prompt)
    assert [2] + [int(i) for i in keras_ids] == token_ids[0].tolist()

    logits = keras_logits[prompt]
    assert logits.shape == expected.shape
    delta = np.abs(logits - expected).max()
    print(f"{prompt[:12]!r}: {token_ids.shape[1]} tokens, max |Δlogits| {delta:.2e}")
    assert delta < LOGITS_ATOL
    assert (logits.argmax(-1) == expected.argmax(-1)).all()


@uses_offline_gguf
def test_greedy_generation_matches_transformers(keras_lm, hf_reference):
    import torch

    model, tokenizer = hf_reference
    prompt = "中国的首都是"
    keras_lm.compile(sampler="greedy")
    keras_text = keras_lm.generate(prompt, max_length=24, strip_prompt=False)
    token_ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        output = model.generate(token_ids, max_length=24, do_sample=False)
    hf_text = tokenizer.decode(output[0], skip_special_tokens=True)
    print(f"greedy: {keras_text!r}")
    assert keras_text == hf_text
    assert keras_text.startswith(prompt) and len(keras_text) > len(prompt)


def test_gguf_export_with_lora_round_trips(offline_preset, tmp_path):
    """The 270M with a non-zero LoRA, written as Q8_0 (blocks along HF rows: the layout-sensitive type) and read back."""
    # Its own copy: LoRA must not leak into the session's `keras_lm`.
    lm = keras_hub.models.Gemma3CausalLM.from_preset(offline_preset)
    lm.backbone.enable_lora(4)
    rng = np.random.default_rng(0)
    for layer in lm.backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_kernel_b.assign(rng.normal(0, 0.01, layer.lora_kernel_b.shape))
    start = time.perf_counter()
    path, report = kg.export_gguf(lm, str(tmp_path / "gguf"), gguf_type="q8_0", prompts=[PROMPTS[1]],
                                  max_new_tokens=4, log=print)
    print(f"exported and verified in {time.perf_counter() - start:.1f} s, {os.path.getsize(path) / 2**20:.0f} MiB")
    print(report.summary())
    assert report.passed, report.summary()
    # Every tensor is the Keras weight with its LoRA merged, as Q8_0, bit for bit; transformers' GGUF
    # loader then gives the logits and greedy tokens of Keras holding those weights.
    assert report.tensors_match and report.tokenizer_match and report.greedy_match
    assert len(report.prompts[0].hf_greedy) == 4 and report.max_abs_logits_diff < LOGITS_ATOL


TRAIN_TEXTS = [
    "中国的首都是北京。北京是中国的政治和文化中心，有三千多年的历史。",
    "The capital of France is Paris. Paris lies on the Seine and is known for its museums.",
    "为什么天空是蓝色的？因为大气中的分子对短波长的蓝光散射更强，这叫瑞利散射。",
    "Keras 3 supports JAX, TensorFlow and PyTorch. A model written once runs on any of them.",
]
HELD_OUT_TEXTS = ["上海是中国最大的城市之一，位于长江入海口。", "Water boils at 100 degrees Celsius at sea level."]
# Measured on CPU (4 AdamW steps, lr 1e-3, LoRA rank 4, 2 x 64 tokens):
# held-out loss float32 3.3833, bfloat16 3.3739, int8 base (bfloat16
# compute) 3.4262: int8 - bfloat16 = 0.052 (1.6%), bfloat16 - float32 =
# 0.009 (docs/facts.md#int8-base). The bound is that distance with headroom.
INT8_VS_BF16_MAX_LOSS_DISTANCE = 0.08


def _held_out_loss_after_training(preset_path, dtype, quantize, steps=4):
    from kerasgemma.config import TrainConfig
    from kerasgemma.data import Batches, TokenizedExample
    from kerasgemma.model import enable_lora, load_causal_lm
    from kerasgemma.quantization import quantize_base
    from kerasgemma.training.optimizer import make_optimizer
    from kerasgemma.training.step import make_train_step, stack_micro_batches, summed_loss

    lm = load_causal_lm(preset_path, dtype=dtype)
    quantize_base(lm, quantize)
    enable_lora(lm, rank=4)
    tokenizer = lm.preprocessor.tokenizer

    def batch(texts):
        examples = [TokenizedExample(np.asarray([2] + [int(t) for t in tokenizer(text)], np.int32),
                                     np.ones(1 + len(tokenizer(text)), np.int8)) for text in texts]
        return next(Batches(examples, len(texts), 64, mode="pad").epoch(0))

    train, held_out = batch(TRAIN_TEXTS[:2]), batch(HELD_OUT_TEXTS)
    optimizer = make_optimizer(TrainConfig(learning_rate=1e-3, schedule="constant"), steps, lm.trainable_variables)
    step = make_train_step(lm, optimizer)
    state = ([v.value for v in lm.trainable_variables], [v.value for v in optimizer.variables])
    frozen = [v.value for v in lm.non_trainable_variables]
    for index in range(steps):
        rows = train if index % 2 == 0 else batch(TRAIN_TEXTS[2:])
        state, _, _ = step(state, frozen, stack_micro_batches([rows]))
    total, count = summed_loss(lm, state[0], frozen, held_out)
    return float(total) / float(count)


def test_int8_base_trains_to_the_bfloat16_loss(offline_preset):
    # The float32 arm of the measurement above is left out here (one more
    # compile and run of the 270M, about a minute): the bound is int8
    # against bfloat16.
    losses = {name: _held_out_loss_after_training(offline_preset, dtype, quantize)
              for name, dtype, quantize in [("bfloat16", "bfloat16", None), ("int8", "bfloat16", "int8")]}
    print(f"held-out loss after 4 steps: {losses}")
    assert abs(losses["int8"] - losses["bfloat16"]) <= INT8_VS_BF16_MAX_LOSS_DISTANCE, losses
