"""End-to-end data path: HC3 jsonl -> examples -> Gemma text -> ids + mask -> packed batches."""

import json

import numpy as np
import pytest

from kerasgemma.config import TrainConfig

from kerasgemma.data import (
    Batches,
    load_examples,
    sentencepiece_processor,
    split_examples,
    tokenize_examples,
)
from kerasgemma.tiny import build_tiny_tokenizer_proto

ROWS = [
    {"id": 0, "question": "什么是熊猫？", "human_answers": ["熊猫是一种熊。"], "chatgpt_answers": ["熊猫是哺乳动物。"]},
    {"id": 1, "question": "天空为什么是蓝色的？", "human_answers": ["因为瑞利散射。", "阳光散射。"], "chatgpt_answers": []},
    {"id": 2, "question": "1+1等于几？", "human_answers": ["等于2。"], "chatgpt_answers": ["2"]},
]


@pytest.fixture(scope="module")
def proto():
    return build_tiny_tokenizer_proto([r["question"] for r in ROWS])


@pytest.fixture
def hc3_file(tmp_path):
    path = tmp_path / "baike.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    return path


def test_answer_choices(hc3_file):
    first, _ = load_examples(hc3_file)
    every, _ = load_examples(hc3_file, answers="all")
    with_chatgpt, _ = load_examples(hc3_file, answers="all", include_chatgpt=True)
    assert [e["messages"][1]["content"] for e in first] == ["熊猫是一种熊。", "因为瑞利散射。", "等于2。"]
    assert len(every) == 4 and len(with_chatgpt) == 6
    assert every[2]["source"].endswith("baike.jsonl:2")


def test_minimal_path_packs_every_loss_token(hc3_file, proto):
    examples, report = load_examples(hc3_file, answers="all", include_chatgpt=True)
    tokenized, token_report = tokenize_examples(examples, proto, max_tokens=65)
    batches = Batches(tokenized, batch_size=2, sequence_length=64, seed=3)
    seen = []
    for batch in batches.epoch(0):
        assert {k: v.shape for k, v in batch.items()} == {k: (2, 64) for k in batch}
        seen.append(batch["loss_weights"].sum())
    assert sum(seen) == token_report.loss_tokens == sum(int(t.loss_mask.sum()) for t in tokenized)
    assert report.examples == token_report.kept == 6


def test_keras_hub_tokenizer_gives_the_same_ids(hc3_file, proto):
    import keras_hub

    keras_tokenizer = keras_hub.models.GemmaTokenizer(proto=proto)
    examples, _ = load_examples(hc3_file, answers="all")
    ours, _ = tokenize_examples(examples, keras_tokenizer, max_tokens=1000)
    processor = sentencepiece_processor(proto)
    from kerasgemma.data import format_chat

    for example, tokenized in zip(examples, ours):
        text = format_chat(example["messages"]).text
        theirs = np.asarray(keras_tokenizer(text))
        assert tokenized.token_ids.tolist() == [processor.bos_id()] + theirs.tolist()


def test_split_is_deterministic_and_keeps_questions_together(hc3_file):
    examples, _ = load_examples(hc3_file, answers="all")
    train, validation = split_examples(examples, validation_fraction=0.5, seed=7)
    assert (train, validation) == split_examples(examples, validation_fraction=0.5, seed=7)
    questions = lambda part: {e["messages"][0]["content"] for e in part}  # noqa: E731
    assert not questions(train) & questions(validation)
    assert len(train) + len(validation) == len(examples)


def test_hub_route_downloads_the_raw_subset_file(hc3_file, monkeypatch):
    """The Hub can't be reached here: stand in for hf_hub_download with the file it would return."""
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, repo_type=None, revision=None):
        calls.append((repo_id, filename, repo_type, revision))
        return str(hc3_file)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    from kerasgemma.data import load_hub_examples, prepare_data

    examples, report = load_hub_examples(subset="baike", answers="all")
    assert calls == [("Hello-SimpleAI/HC3-Chinese", "baike.jsonl", "dataset", None)]
    assert len(examples) == 4 and report.rows_read == 3
    proto = build_tiny_tokenizer_proto()
    config = TrainConfig(data="hf://Hello-SimpleAI/HC3-Chinese", sequence_length=64, batch_size=2,
                         subset="baike", validation_fraction=0.0)
    data = prepare_data(config, proto)
    assert calls[-1][:2] == ("Hello-SimpleAI/HC3-Chinese", "baike.jsonl")
    assert data.summary()["train_examples"] == 3 and data.validation is None


def test_split_never_empties_train():
    one = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    assert split_examples(one, validation_fraction=0.5, seed=0) == (one, [])
