"""`kerasgemma chat` and `kerasgemma eval` on a tiny trained run, and the quiet, fast start-up."""

import io
import json
import os
import subprocess
import sys
import types

import pytest

from kerasgemma import cli
from kerasgemma.commands import chat as chat_command
from kerasgemma.commands.chat import converse
from kerasgemma.config import TrainConfig
from kerasgemma.data import generation_prompt
from kerasgemma.export import export_merged
from kerasgemma.generation import chat
from kerasgemma.quiet import native_stderr_silenced
from kerasgemma.streaming import TokenStream

NOISE = ("oneDNN", "cudart_stub", "absl::InitializeLog", "cuInit")


@pytest.fixture
def trained(trained_tiny_run):
    """The session's trained tiny run (tests/conftest.py): slow tests only."""
    return trained_tiny_run


@pytest.fixture
def chat_with(trained, monkeypatch):
    """`chat` answering from the trained run in memory (loading it again is `eval`'s tests' job)."""
    monkeypatch.setattr(chat_command, "load_run_to_stderr", lambda run_dir: trained)
    return trained


@pytest.fixture
def untrained_run(shared_tiny_lm, monkeypatch):
    """`chat` answering from the shared tiny Gemma as if it were a run (no training: the fast tier's)."""
    loaded = types.SimpleNamespace(causal_lm=shared_tiny_lm("gemma"), config=TrainConfig(preset="tiny:gemma"))
    monkeypatch.setattr(chat_command, "load_run_to_stderr", lambda run_dir: loaded)
    return loaded


@pytest.mark.slow
def test_eval_on_the_validation_rows_gives_the_runs_validation_loss(trained, tmp_path, capsys):
    run = trained
    validation = run.validation_examples
    path = tmp_path / "validation.jsonl"
    path.write_text("\n".join(json.dumps(example, ensure_ascii=False) for example in validation))
    assert cli.main(["eval", str(run.run_dir), str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == len(validation) > 0
    assert result["step"] == 2 and result["tokens"] > 0
    assert result["loss"] == pytest.approx(run.summary["val_loss"], rel=1e-5)
    assert result["perplexity"] == pytest.approx(2.718281828 ** result["loss"], rel=1e-5)


@pytest.mark.slow
def test_eval_counts_completion_tokens_only_and_prints_a_table(trained, capsys):
    run = trained
    data = run.config.data
    assert cli.main(["eval", str(run.run_dir), data, "--json"]) == 0
    completion = json.loads(capsys.readouterr().out)
    # The same file scored on every token gives more tokens: eval ignores the prompt's.
    full = TrainConfig.from_file(run.run_dir / "config.json")
    assert full.loss == "completion"
    assert cli.main(["eval", str(run.run_dir), data]) == 0
    table = capsys.readouterr().out
    assert f"{completion['loss']:.4f}" in table and "12 (skipped 0" in table
    prompt_and_answer_tokens = sum(len(example.token_ids) - 1 for example in run.data.train.examples)
    assert 0 < completion["tokens"] < prompt_and_answer_tokens + 100


def test_eval_of_a_folder_that_is_no_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path), "x.jsonl"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is not a run folder" in error


def test_chat_prints_the_streamed_answer_to_the_templated_prompt(untrained_run, monkeypatch, capsys):
    """The CLI's side of streaming (tests/test_streaming.py checks the tokens against `generate`)."""
    calls = []
    token_ids = TokenStream.token_ids

    def recording(stream, prompt, max_new_tokens):
        calls.append((prompt, max_new_tokens, list(token_ids(stream, prompt, max_new_tokens))))
        yield from calls[-1][2]

    monkeypatch.setattr(TokenStream, "token_ids", recording)
    question = "3加3等于几？"
    assert cli.main(["chat", "runs/x", "-p", question, "--max-new-tokens", "6"]) == 0
    [(prompt, max_new_tokens, ids)] = calls
    assert prompt == generation_prompt([{"role": "user", "content": question}]) and max_new_tokens == 6
    assert 0 < len(ids) <= 6
    tokenizer = untrained_run.causal_lm.preprocessor.tokenizer
    assert capsys.readouterr().out == tokenizer.detokenize([ids])[0] + "\n"


@pytest.mark.slow
def test_chat_answers_each_prompt_like_the_run(chat_with, capsys):
    questions = ["3加3等于几？", "你好"]
    argv = ["chat", "runs/x", "-p", questions[0], "-p", questions[1], "--max-new-tokens", "4"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == "".join(answer + "\n" for answer in chat_with.answer(questions))


@pytest.mark.slow
def test_chat_on_an_exported_folder_answers_through_transformers_like_keras(shared_tiny_lm, tmp_path, capsys):
    lm = shared_tiny_lm("gemma3")
    folder = export_merged(lm, tmp_path / "hf", dtype="float32")
    question = "中国的首都是哪里？"
    assert cli.main(["chat", str(folder), "-p", question, "--max-new-tokens", "6"]) == 0
    # The folder's chat template is the training format, its float32 weights Keras' (greedy: same answer).
    assert capsys.readouterr().out == chat(lm, [{"role": "user", "content": question}], max_new_tokens=6) + "\n"


@pytest.mark.slow
def test_chat_reads_one_prompt_per_line_from_piped_stdin(chat_with, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("1加1等于几？\n\n"))
    assert cli.main(["chat", "runs/x", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == chat_with.answer(["1加1等于几？"])[0] + "\n"


@pytest.mark.slow
def test_chat_samples_with_a_seed_reproducibly(chat_with, capsys):
    argv = ["chat", "runs/x", "-p", "你好", "--sampler", "top_k", "--top-k", "5", "--seed", "3",
            "--max-new-tokens", "4"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == first


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_conversation_keeps_history_until_reset_and_ends_on_an_empty_line(capsys):
    seen = []

    def answer(messages):
        seen.append([message["content"] for message in messages])
        print(f"answer {len(seen)}")
        return f"answer {len(seen)}"

    assert converse(answer, Terminal("hi\nmore\n/reset\nagain\n\nnot read\n")) == 0
    assert seen == [["hi"], ["hi", "answer 1", "more"], ["again"]]
    assert capsys.readouterr().out == "answer 1\nanswer 2\nanswer 3\n"


def test_every_table_help_line_is_the_commands_own(capsys):
    parser = cli.make_parser()
    actions = parser._subparsers._group_actions[0]._choices_actions
    assert {action.dest: action.help for action in actions} == {
        name: help_text for name, (_, help_text) in cli.COMMANDS.items()}


def test_native_stderr_silenced_hides_c_level_writes_and_replays_them_on_error(capfd):
    with native_stderr_silenced():
        os.write(2, b"oneDNN custom operations are on\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(ImportError), native_stderr_silenced():
        os.write(2, b"why it failed\n")
        raise ImportError("broken")
    assert capfd.readouterr().err == "why it failed\n"


def test_help_imports_neither_keras_nor_tensorflow():
    code = ("import sys; from kerasgemma import cli\n"
            "try: cli.main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('keras', 'keras_hub', 'jax', 'tensorflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]" and "chat" in done.stdout and "eval" in done.stdout


@pytest.mark.slow
def test_eval_entry_point_prints_json_and_no_start_up_noise(trained):
    run = trained
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "kerasgemma", "eval", str(run.run_dir), run.config.data, "--json"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["examples"] == 12
    assert not [line for line in done.stderr.splitlines() if any(word in line for word in NOISE)], done.stderr


@pytest.mark.slow
def test_chat_entry_point_answers_on_stdout_only(trained):
    run = trained
    done = subprocess.run([sys.executable, "-m", "kerasgemma", "chat", str(run.run_dir), "-p", "你好",
                           "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == run.answer(["你好"])[0] + "\n"
    assert "Devices:" in done.stderr
