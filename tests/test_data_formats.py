"""Bring your own data: every row form, --columns, bad rows of each form, `datasets` objects and `hub:` specs.

Everything is local: files written here, and a `datasets` repository folder
made here and read through `hub:FOLDER` (the same `datasets.load_dataset`
call a Hub id takes).
"""

import json

import pytest

from helpers import parse_subcommand

from kerasgemma.config import TrainConfig
from kerasgemma.commands import data as command
from kerasgemma.data import DataError, format_chat, load_examples, prepare_data
from kerasgemma.data.loading import load_source_examples
from kerasgemma.errors import UserError

U, A, S = "什么是熊猫？", "熊猫是一种熊。", "你是一个乐于助人的助手。"
USER, ASSISTANT, SYSTEM = ({"role": role, "content": text} for role, text in
                           [("user", U), ("assistant", A), ("system", S)])

# form -> (rows in that form, with extra fields and fields in unusual orders; expected conversations)
FORMS = {
    "alpaca": (
        [
            {"id": 3, "output": A, "input": "", "instruction": U},
            {"output": "第二个", "category": "qa", "instruction": "翻译", "input": "hello", "system": S},
            {"history": [["你好", "你好！"]], "instruction": U, "output": "再说一次"},
        ],
        [
            [USER, ASSISTANT],
            [SYSTEM, {"role": "user", "content": "翻译\nhello"}, {"role": "assistant", "content": "第二个"}],
            [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
             USER, {"role": "assistant", "content": "再说一次"}],
        ],
    ),
    "sharegpt": (
        [
            {"conversations": [{"value": U, "from": "human"}, {"from": "gpt", "value": A}], "id": "a1"},
            {"system": S, "conversations": [{"from": "user", "value": U}, {"from": "assistant", "value": "答二"}]},
            {"conversations": [{"from": "system", "value": S}, {"from": "human", "value": "问三"},
                               {"from": "gpt", "value": "答三"}]},
        ],
        [
            [USER, ASSISTANT],
            [SYSTEM, USER, {"role": "assistant", "content": "答二"}],
            [SYSTEM, {"role": "user", "content": "问三"}, {"role": "assistant", "content": "答三"}],
        ],
    ),
    "prompt_completion": (
        [
            {"completion": A, "prompt": U},
            {"prompt": [SYSTEM, USER], "extra": 1, "completion": [{"role": "assistant", "content": "答二"}]},
        ],
        [[USER, ASSISTANT], [SYSTEM, USER, {"role": "assistant", "content": "答二"}]],
    ),
    "messages": (
        [{"source": "x", "messages": [SYSTEM, USER, ASSISTANT]}],
        [[SYSTEM, USER, ASSISTANT]],
    ),
    "hc3": (
        [{"chatgpt_answers": ["机器答"], "human_answers": [A], "question": U, "id": 0}],
        [[USER, ASSISTANT]],
    ),
}

# form -> [(bad row, problem kind, words of the message)]
BAD_ROWS = {
    "alpaca": [
        ({"input": "x", "output": A}, "missing_question", "no 'instruction' field"),
        ({"instruction": " ", "output": A}, "empty_question", "'instruction' is empty"),
        ({"instruction": U, "output": ""}, "no_usable_answer", "'output' is empty"),
        ({"instruction": U, "input": 3, "output": A}, "wrong_type", "'input' must be a string"),
        ({"instruction": U, "output": [A]}, "wrong_type", "'output' must be a string"),
        ({"instruction": U, "output": A, "history": [["只有问题"]]}, "wrong_type", "'history'[0]"),
    ],
    "sharegpt": [
        ({"conversations": [{"from": "human", "value": U}]}, "bad_messages", "must end with an assistant turn"),
        ({"conversations": [{"from": "human", "value": U}, {"from": "function_call", "value": "{}"}]},
         "unsupported_role", "conversations[1] is from 'function_call'"),
        ({"conversations": [{"from": "human", "value": U}, {"from": "tool", "value": "x"}]},
         "unsupported_role", "from 'tool'"),
        ({"conversations": "hi"}, "wrong_type", "'conversations' must be a list"),
        ({"conversations": [{"from": "gpt", "value": A}, {"from": "human", "value": U}]},
         "bad_messages", "expected 'user'"),
        ({"conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": A}]},
         "bad_messages", "conversations[0].content is empty"),
    ],
    "prompt_completion": [
        ({"completion": A}, "missing_question", "no 'prompt' field"),
        ({"prompt": "  ", "completion": A}, "empty_question", "'prompt' is empty"),
        ({"prompt": U, "completion": " "}, "no_usable_answer", "'completion' is empty"),
        ({"prompt": U, "completion": [ASSISTANT]}, "wrong_type", "'completion' must be a string like 'prompt'"),
        ({"prompt": [USER], "completion": [USER]}, "bad_messages", "completion[0] has role 'user'"),
        ({"prompt": [ASSISTANT], "completion": [ASSISTANT]}, "bad_messages", "turn 1 is 'assistant'"),
    ],
    "messages": [
        ({"messages": [USER]}, "bad_messages", "must end with an assistant turn"),
        ({"messages": "hi"}, "wrong_type", "'messages' must be a list"),
    ],
    "hc3": [
        ({"question": 42, "human_answers": [A]}, "wrong_type", "'question' must be a string"),
        ({"question": U, "human_answers": []}, "no_usable_answer", "no non-empty answer"),
    ],
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def conversations(examples):
    return [example["messages"] for example in examples]


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_is_detected_and_converted(tmp_path, form):
    rows, expected = FORMS[form]
    examples, report = load_examples(write_jsonl(tmp_path / "mine.jsonl", rows))
    assert report.formats == {str(tmp_path / "mine.jsonl"): form}
    assert conversations(examples) == expected
    assert examples[0]["source"] == f"{tmp_path / 'mine.jsonl'}:1"


@pytest.mark.parametrize("form", ["alpaca", "sharegpt", "prompt_completion"])
def test_json_array_and_parquet_files_in_any_field_order(tmp_path, form):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, expected = FORMS[form]
    rows = [dict(reversed(list(row.items()))) for row in rows]
    (tmp_path / "a.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    examples, report = load_examples(tmp_path / "a.json")
    assert conversations(examples) == expected and report.formats[str(tmp_path / "a.json")] == form
    if form == "alpaca":  # One Parquet schema needs one shape of history; leave it out.
        rows, expected = rows[:2], expected[:2]
    if form == "prompt_completion":  # Strings and message lists cannot share a Parquet column.
        rows, expected = rows[:1], expected[:1]
    keys = list(dict.fromkeys(key for row in rows for key in row))  # Missing fields are null in a table.
    pq.write_table(pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows]), tmp_path / "b.parquet")
    examples, report = load_examples(tmp_path / "b.parquet")
    assert conversations(examples) == expected and report.formats[str(tmp_path / "b.parquet")] == form


def test_the_chat_text_is_the_same_whatever_the_form(tmp_path):
    texts = set()
    for form, (rows, _) in FORMS.items():
        examples, _ = load_examples(write_jsonl(tmp_path / f"{form}.jsonl", rows[:1]))
        texts.add(format_chat(examples[0]["messages"]).text)
    texts.discard(format_chat([SYSTEM, USER, ASSISTANT]).text)  # The messages row has a system turn.
    assert texts == {f"<start_of_turn>user\n{U}<end_of_turn>\n<start_of_turn>model\n{A}<end_of_turn>\n"}


@pytest.mark.parametrize("form, row, kind, words", [
    (form, row, kind, words) for form, cases in BAD_ROWS.items() for row, kind, words in cases
])
def test_bad_row_of_each_form_names_file_line_and_kind(tmp_path, form, row, kind, words):
    good = FORMS[form][0][0]
    path = write_jsonl(tmp_path / "mine.jsonl", [good, good, row])
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert (info.value.kind, info.value.source) == (kind, f"{path}:3")
    assert words in str(info.value) and str(info.value).startswith(f"{path}:3: ")


@pytest.mark.parametrize("form", list(BAD_ROWS))
def test_skip_counts_the_bad_rows_of_each_form(tmp_path, form):
    bad = BAD_ROWS[form]
    path = write_jsonl(tmp_path / "mine.jsonl", [row for row, _, _ in bad] + FORMS[form][0])
    examples, report = load_examples(path, on_error="skip")
    expected = {}
    for _, kind, _ in bad:
        expected[kind] = expected.get(kind, 0) + 1
    assert report.skipped == expected
    assert report.rows_read == len(bad) + len(FORMS[form][0])
    assert conversations(examples) == FORMS[form][1]
    assert report.formats == {str(path): form}


def test_a_row_of_another_form_is_mixed_formats(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", FORMS["alpaca"][0] + FORMS["sharegpt"][0][:1] + FORMS["alpaca"][0][:1])
    with pytest.raises(DataError, match=r"mine.jsonl:4: this row is sharegpt but the file is alpaca"):
        load_examples(path)
    _, report = load_examples(path, on_error="skip")
    assert report.skipped == {"mixed_formats": 1} and report.duplicates_removed == 1


def test_format_flag_overrides_detection(tmp_path):
    # Alpaca rows whose field names would also fit prompt/completion.
    path = write_jsonl(tmp_path / "mine.jsonl", [{"instruction": U, "output": A, "prompt": "模板"}])
    with pytest.raises(UserError, match=r"fit several forms \(alpaca, prompt_completion\); pick one with --format"):
        load_examples(path)
    examples, report = load_examples(path, format="alpaca")
    assert conversations(examples) == [[USER, ASSISTANT]] and report.formats[str(path)] == "alpaca"
    with pytest.raises(DataError, match="mixed_formats"):
        load_examples(write_jsonl(tmp_path / "hc3.jsonl", FORMS["hc3"][0]), format="sharegpt")


def test_unknown_fields_list_the_forms_and_the_flags(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"query": U, "response": A}])
    with pytest.raises(UserError) as info:
        load_examples(path)
    message = str(info.value)
    assert message.startswith(f"{path}:1: cannot tell the row form from the fields (query, response)")
    assert all(form in message for form in FORMS) and "--columns" in message and "--format" in message
    assert "\n" not in message


def test_columns_map_differently_named_fields(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"response": A, "query": U, "id": 1}])
    examples, report = load_examples(path, columns="question=query,answer=response")
    assert conversations(examples) == [[USER, ASSISTANT]] and report.formats[str(path)] == "prompt_completion"
    examples, report = load_examples(path, columns="instruction=query,output=response")
    assert conversations(examples) == [[USER, ASSISTANT]] and report.formats[str(path)] == "alpaca"
    examples, _ = load_examples(path, columns="query=instruction, response=output")  # COLUMN=NAME works too.
    assert conversations(examples) == [[USER, ASSISTANT]]
    with pytest.raises(UserError, match="'reply' is not a field kerasgemma reads"):
        load_examples(path, columns="reply=response")
    # A mapped column a row lacks is that row's problem, named with its line.
    write_jsonl(path, [{"response": A, "query": U}, {"query": U, "answer": A}])
    with pytest.raises(DataError, match=r"mine.jsonl:2: no 'output' field") as info:
        load_examples(path, columns="instruction=query,output=response")
    assert info.value.kind == "no_usable_answer"


def test_parquet_missing_column_of_its_form(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"instruction": [U], "response": [A]}), path)
    with pytest.raises(UserError, match=r"missing column output for the alpaca form .*--columns output=COLUMN"):
        load_examples(path)
    assert load_examples(path, columns="output=response")[1].formats == {str(path): "alpaca"}


def parse(argv):
    return parse_subcommand(command, "data", argv)


@pytest.mark.parametrize("form", list(FORMS))
def test_data_command_reports_the_form(tmp_path, capsys, form):
    rows = [dict(row) for row in FORMS[form][0]] * 1
    bad = BAD_ROWS[form][0][0]
    path = write_jsonl(tmp_path / "mine.jsonl", rows + [bad] + rows[:1])
    code = command.run(parse([str(path), "--on-error", "skip", "--json", "--sequence-length", "64",
                              "--validation-fraction", "0"]))
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == f"format: {form} (detected)"
    summary = json.loads(out[-1])
    assert summary["formats"] == {str(path): form}
    assert summary["rows_read"] == len(rows) + 2 and summary["skipped_total"] == 1
    assert summary["duplicates_removed"] == 1 and summary["examples"] == len(rows)


def test_data_command_format_and_columns_flags(tmp_path, capsys):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"q": U, "a": A}])
    code = command.run(parse([str(path), "--columns", "prompt=q,completion=a", "--format", "prompt_completion",
                              "--sequence-length", "64"]))
    assert code == 0 and capsys.readouterr().out.splitlines()[0] == "format: prompt_completion (set by --format)"
    assert TrainConfig(columns="bogus").problems() == [
        "columns: 'bogus' is not NAME=COLUMN; write e.g. 'instruction=query,output=response' (NAME one of: "
        "chatgpt_answers, completion, conversations, history, human_answers, input, instruction, messages, "
        "output, prompt, question, system, answer)."]
    assert "format must be one of" in TrainConfig(format="dolly").problems()[0]


# --- `datasets` objects and hub: specs ----------------------------------------------

ALPACA_ROWS = [{"instruction": f"问题{i}", "input": "", "output": f"答案{i}"} for i in range(12)]


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    """`datasets`, offline, caching under tmp_path."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    return datasets


def test_dataset_object_goes_to_prepare_data(offline_datasets, tiny_proto):
    dataset = offline_datasets.Dataset.from_list(ALPACA_ROWS + [{"instruction": "", "input": "", "output": "x"}])
    config = TrainConfig(sequence_length=32, batch_size=2, validation_fraction=0.25, on_error="skip")
    prepared = prepare_data(config, tiny_proto, data=dataset)
    summary = prepared.summary()
    assert summary["files"] == ["train"] and summary["formats"] == {"train": "alpaca"}
    assert summary["rows_read"] == 13 and summary["skipped"] == {"empty_question": 1}
    assert summary["train_examples"] + summary["validation_examples"] == 12
    sources = sorted(e["source"] for e in prepared.examples.train + prepared.examples.validation)
    assert sources[:2] == ["train[0]", "train[10]"]
    with pytest.raises(DataError, match=r"^train\[12\]: 'instruction' is empty"):
        prepare_data(TrainConfig(sequence_length=32), tiny_proto, data=dataset)


def test_dataset_dict_split_is_chosen_by_name(offline_datasets, tiny_proto):
    sharegpt = [{"conversations": [{"from": "human", "value": f"问{i}"}, {"from": "gpt", "value": f"答{i}"}]}
                for i in range(6)]
    splits = offline_datasets.DatasetDict({
        "train": offline_datasets.Dataset.from_list(ALPACA_ROWS),
        "test": offline_datasets.Dataset.from_list(sharegpt),
    })
    config = TrainConfig(sequence_length=32, validation_fraction=0)
    assert prepare_data(config, tiny_proto, data=splits).summary()["formats"] == {"train": "alpaca"}
    summary = prepare_data(TrainConfig(sequence_length=32, split="test"), tiny_proto, data=splits).summary()
    assert summary["formats"] == {"test": "sharegpt"} and summary["examples"] == 6
    with pytest.raises(UserError, match="no split 'dev'; its splits: train, test"):
        prepare_data(TrainConfig(split="dev"), tiny_proto, data=splits)


def make_repo(folder):
    """A local dataset repository: two configs (alpaca, sharegpt rows) of JSON Lines files."""
    (folder / "zh").mkdir(parents=True)
    write_jsonl(folder / "zh" / "train.jsonl", ALPACA_ROWS)
    write_jsonl(folder / "zh" / "test.jsonl", ALPACA_ROWS[:3] + [{"instruction": "问", "input": "", "output": " "}])
    (folder / "chat").mkdir()
    rows = [{"conversations": [{"from": "human", "value": f"问{i}"}, {"from": "gpt", "value": f"答{i}"}]}
            for i in range(5)]
    write_jsonl(folder / "chat" / "train.jsonl", rows)
    (folder / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: zh\n  default: true\n  data_files:\n"
        "  - split: train\n    path: zh/train.jsonl\n  - split: test\n    path: zh/test.jsonl\n"
        "- config_name: chat\n  data_files:\n  - split: train\n    path: chat/train.jsonl\n---\n"
    )
    return folder


def test_hub_spec_reads_a_dataset_repository(offline_datasets, tmp_path):
    repo = make_repo(tmp_path / "repo")
    examples, report = load_source_examples(f"hub:{repo}")
    assert report.formats == {"train": "alpaca"} and len(examples) == 12
    assert examples[0]["source"] == "train[0]"
    examples, report = load_source_examples(f"hub:{repo}:chat@train")
    assert report.formats == {"train": "sharegpt"} and len(examples) == 5
    with pytest.raises(DataError, match=r"^test\[3\]: 'output' is empty or whitespace-only \[no_usable_answer\]"):
        load_source_examples(f"hub:{repo}:zh@test")
    _, report = load_source_examples(f"hub:{repo}", split="test", on_error="skip")
    assert report.skipped == {"no_usable_answer": 1}
    assert any((tmp_path / "cache").iterdir())  # Cached where `datasets` caches.
    with pytest.raises(UserError, match="datasets.load_dataset could not read it"):
        load_source_examples(f"hub:{repo}:nope")


def test_hub_spec_in_the_data_command(offline_datasets, tmp_path, capsys):
    repo = make_repo(tmp_path / "repo")
    assert command.run(parse([f"hub:{repo}:chat", "--sequence-length", "64", "--json"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "format: sharegpt (detected)" and json.loads(out[-1])["files"] == ["train"]


def test_script_based_repository_is_explained(offline_datasets, tmp_path):
    repo = tmp_path / "scripted"
    repo.mkdir()
    (repo / "scripted.py").write_text("import datasets\n")
    with pytest.raises(UserError, match="only a loading script, which datasets .* no longer runs. Download its raw"):
        load_source_examples(f"hub:{repo}")


def test_a_run_that_read_python_data_asks_for_it_again():
    with pytest.raises(UserError, match=r"'python:train' was a datasets.Dataset held in Python; pass it again"):
        load_source_examples("python:train")
    assert TrainConfig(data="python:train").problems() == []
    assert TrainConfig(data="hub:owner/name:config@split").problems() == []


def test_csv_files_in_any_column_order(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(f'id,output,instruction,input\n1,{A},{U},\n2,"多行\n答案",翻译,hello\n3,,{U},\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"mine.csv:5: 'output' is empty"):
        load_examples(path)
    examples, report = load_examples(path, on_error="skip")
    assert report.formats == {str(path): "alpaca"} and report.skipped == {"no_usable_answer": 1}
    assert conversations(examples) == [[USER, ASSISTANT], [{"role": "user", "content": "翻译\nhello"},
                                                            {"role": "assistant", "content": "多行\n答案"}]]
    assert [e["source"] for e in examples] == [f"{path}:2", f"{path}:3"]
    (tmp_path / "qa.csv").write_text("q,a\n问,答\n", encoding="utf-8")
    with pytest.raises(UserError, match="missing column instruction, output for the alpaca form"):
        load_examples(tmp_path / "qa.csv", format="alpaca")


@pytest.mark.slow
def test_train_takes_a_dataset_and_the_run_asks_for_it_again(offline_datasets, tmp_path):
    import kerasgemma as kg

    dataset = offline_datasets.Dataset.from_list(ALPACA_ROWS * 2)
    config = TrainConfig(
        preset="tiny:gemma", sequence_length=48, batch_size=2, max_steps=2, eval_every=0,
        validation_fraction=0.2, output_dir=str(tmp_path / "runs"),
    )
    run = kg.train(config, data=dataset, progress=False)
    assert json.loads((run.run_dir / "config.json").read_text())["data"] == "python:train"
    assert json.loads((run.run_dir / "data_report.json").read_text())["formats"] == {"train": "alpaca"}
    assert (run.run_dir / "adapter.lora.h5").is_file()
    with pytest.raises(UserError, match="pass it again"):
        kg.load_run(run.run_dir, progress=False)
    assert kg.load_run(run.run_dir, progress=False, data=dataset).run_dir == run.run_dir
