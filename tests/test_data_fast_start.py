"""`kerasgemma data` on a `tiny:` preset runs without Keras, keras-hub or TensorFlow, with the model's token ids."""

import json
import subprocess
import sys

import pytest
from helpers import write_sum_rows

from kerasgemma.config import TrainConfig
from kerasgemma.data.pipeline import prepare_data
from kerasgemma.data.pipeline import preset_tokenizer
from kerasgemma.data.tokenize import sentencepiece_processor
from kerasgemma.tiny import build_tiny_tokenizer

HEAVY = ("keras", "keras_hub", "tensorflow", "jax", "torch")
TEXTS = ["中国的首都是哪里？北京。", "The quick brown fox 123 龘😀", "<start_of_turn>user\n你好<end_of_turn>\n"]


def test_data_command_imports_no_keras_tensorflow_or_jax(tmp_path):
    rows = write_sum_rows(tmp_path / "rows.jsonl", 11)
    code = ("import sys; from kerasgemma import cli\n"
            f"code = cli.main(['data', {str(rows)!r}, '--json'])\n"
            f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-2])["train_examples"] == 10
    assert done.stdout.splitlines()[-1] == "0 []"


@pytest.mark.parametrize("architecture", ["gemma3", "gemma4"])
def test_tiny_preset_tokenizes_as_the_models_keras_hub_tokenizer(architecture, tmp_path):
    config = TrainConfig(preset=f"tiny:{architecture}", data=str(write_sum_rows(tmp_path / "rows.jsonl", 11)),
                         sequence_length=64, template="gemma4" if architecture == "gemma4" else "gemma")
    without_keras = prepare_data(config)
    model_tokenizer = build_tiny_tokenizer(architecture, texts=without_keras.examples.texts())
    with_keras = prepare_data(config, tokenizer=model_tokenizer, examples=without_keras.examples)
    ids = [example.token_ids.tolist() for example in without_keras.train.examples]
    assert ids == [example.token_ids.tolist() for example in with_keras.train.examples]
    assert without_keras.summary() == with_keras.summary()
    # And the plain SentencePiece processor gives keras-hub's own ids, special pieces and byte fallback included.
    processor = sentencepiece_processor(preset_tokenizer(config.preset, without_keras.examples.texts()))
    for text in TEXTS:
        assert processor.encode(text) == [int(i) for i in model_tokenizer(text)]

