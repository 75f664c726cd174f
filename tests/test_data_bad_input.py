"""Every kind of bad input: a clear error by default, a counted skip with on_error="skip"."""

import json

import pytest

from kerasgemma.data import DataError, load_examples

GOOD = {"question": "问题", "human_answers": ["答案"], "chatgpt_answers": []}
GOOD_CHAT = {"messages": [{"role": "user", "content": "问题"}, {"role": "assistant", "content": "答案"}]}

# (line as written, problem kind)
BAD_LINES = [
    ("{not json", "invalid_json"),
    ('["a", "list"]', "not_an_object"),
    ('"just a string"', "not_an_object"),
    ('{"human_answers": ["答案"]}', "missing_question"),
    ('{"question": "", "human_answers": ["答案"]}', "empty_question"),
    ('{"question": "   ", "human_answers": ["答案"]}', "empty_question"),
    ('{"question": 42, "human_answers": ["答案"]}', "wrong_type"),
    ('{"question": "问题", "human_answers": "答案"}', "wrong_type"),
    ('{"question": "问题", "human_answers": [1]}', "wrong_type"),
    ('{"question": "问题", "human_answers": []}', "no_usable_answer"),
    ('{"question": "问题"}', "no_usable_answer"),
    ('{"question": "问题", "human_answers": ["  ", "\\n"]}', "no_usable_answer"),
    ('{"messages": "hi"}', "wrong_type"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "bad_messages"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "bad_messages"),
    ('{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]}', "bad_messages"),
    ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}', "wrong_type"),
]


def good_row_for(line):
    """A good row of the same form as `line` (a file holds one row form)."""
    return GOOD_CHAT if line.startswith('{"messages"') else GOOD


def write_lines(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("line, kind", BAD_LINES)
def test_bad_row_raises_with_file_line_and_kind(tmp_path, line, kind):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(good_row_for(line)), "", line])
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert info.value.kind == kind
    assert info.value.source == f"{path}:3"
    assert str(info.value).startswith(f"{path}:3: ")


def test_invalid_utf8_names_the_line(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(GOOD), b'{"question": "\xff\xfe"}'])
    with pytest.raises(DataError, match=r"data.jsonl:2: invalid UTF-8") as info:
        load_examples(path)
    assert info.value.kind == "invalid_utf8"


def test_skip_counts_every_kind(tmp_path):
    hc3 = [json.dumps(GOOD, ensure_ascii=False), "   "]
    hc3 += [line for line, _ in BAD_LINES if good_row_for(line) is GOOD]
    hc3 += [b"\xc3\x28", json.dumps(dict(GOOD, question="另一个问题"), ensure_ascii=False)]
    chat = [line for line, _ in BAD_LINES if good_row_for(line) is GOOD_CHAT] + [json.dumps(GOOD_CHAT)]
    write_lines(tmp_path / "data.jsonl", hc3)
    write_lines(tmp_path / "data_chat.jsonl", chat)
    examples, report = load_examples(tmp_path, on_error="skip")
    expected = {}
    for _, kind in BAD_LINES:
        expected[kind] = expected.get(kind, 0) + 1
    expected["invalid_utf8"] = 1
    assert report.skipped == expected
    assert report.rows_read == len(hc3) - 1 + len(chat)  # The blank line is not a row.
    assert report.examples == len(examples) == 2  # The chat row repeats the first HC3 question.
    assert report.duplicates_removed == 1
    assert report.to_dict()["skipped_total"] == len(BAD_LINES) + 1
    assert report.formats == {str(tmp_path / "data.jsonl"): "hc3", str(tmp_path / "data_chat.jsonl"): "messages"}


def test_a_row_of_another_form_names_its_line(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(GOOD), json.dumps(GOOD_CHAT)])
    with pytest.raises(DataError, match=r"data.jsonl:2: this row is messages but the file is hc3 "
                                         r"\(from .*data.jsonl:1\)") as info:
        load_examples(path)
    assert info.value.kind == "mixed_formats"
    assert load_examples(path, on_error="skip")[1].skipped == {"mixed_formats": 1}


def test_whitespace_only_answers_are_not_answers(tmp_path):
    row = {"question": "问题", "human_answers": ["  ", "真正的答案"]}
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(row, ensure_ascii=False)])
    examples, _ = load_examples(path)
    assert examples[0]["messages"][1]["content"] == "真正的答案"


def test_empty_file(tmp_path):
    path = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match="empty.jsonl: the file holds no rows") as info:
        load_examples(path)
    assert info.value.kind == "empty_file"
    folder = tmp_path
    write_lines(folder / "good.jsonl", [json.dumps(GOOD)])
    examples, report = load_examples(folder, on_error="skip")
    assert report.skipped == {"empty_file": 1} and len(examples) == 1


def test_missing_file_and_nothing_usable(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_examples(tmp_path / "nope.jsonl", on_error="skip")
    path = write_lines(tmp_path / "bad.jsonl", ["{oops"])
    with pytest.raises(ValueError, match="no usable examples"):
        load_examples(path, on_error="skip")


def test_json_array_rows_keep_line_numbers(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"question": "q1", "human_answers": ["a1"]},\n  {"question": 7}\n]\n')
    with pytest.raises(DataError, match=r"data.json:3: 'question' must be a string"):
        load_examples(path)
    examples, report = load_examples(path, on_error="skip")
    assert examples[0]["source"] == f"{path}:2" and report.skipped == {"wrong_type": 1}
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"question": "q1", "human_answers": ["a1"]},\n  {"question": \n')
    with pytest.raises(DataError, match=r"broken.json:\d+: invalid JSON"):
        load_examples(broken)


def test_parquet_and_json_lines_in_a_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [GOOD, dict(GOOD, question="第二个")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part.parquet")
    write_lines(tmp_path / "chat.json", [json.dumps({"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"}]})])
    examples, report = load_examples(tmp_path)
    assert [e["source"].rsplit("/", 1)[-1] for e in examples] == ["chat.json:1", "part.parquet:row 1", "part.parquet:row 2"]
    assert examples[0]["messages"][0] == {"role": "system", "content": "s"}
    assert report.rows_read == 3


def test_folder_with_hc3_layout_reads_only_the_subset(tmp_path):
    write_lines(tmp_path / "baike.jsonl", [json.dumps(GOOD)])
    write_lines(tmp_path / "all.jsonl", [json.dumps(GOOD), json.dumps(dict(GOOD, question="x"))])
    assert load_examples(tmp_path)[1].rows_read == 1
    assert load_examples(tmp_path, subset="all")[1].rows_read == 2
