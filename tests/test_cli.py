"""The command line: every subcommand's --help tells its flags, and the entry point runs."""

import re
import subprocess
import sys

import pytest

from kerasgemma.cli import make_parser

SUBCOMMANDS = ["demo", "data", "train", "resume", "offline-model", "export", "chat", "eval", "plan"]

# Flags (and positionals) each subcommand's --help must show, besides --help.
EXPECTED_HELP = {
    "demo": ["--held-out", "--export-dtype", "--skip-export", "--no-progress", "--config", "--preset", "--lora-rank"],
    "data": ["path", "--subset", "--on-error", "--json", "--preset", "--sequence-length", "--batching"],
    "train": ["--config", "--preset", "--lora-rank", "--no-progress"],
    "resume": ["run_dir", "--no-progress"],
    "offline-model": ["--cache-dir", "--force"],
    "plan": ["--preset", "--device", "--quantize", "--remat", "--batch-size", "--sequence-length", "--lora-rank",
             "--json"],
    "chat": ["RUN_OR_FOLDER", "--prompt", "--max-new-tokens", "--sampler", "--temperature", "--top-k", "--top-p", "--seed"],
    "eval": ["run_dir", "FILE", "--json", "--format", "--columns", "--on-error"],
    "export": ["--weights", "--lora", "--adapter-only", "--dtype", "--no-verify", "--atol", "--no-mlx", "--push"],
}


def test_every_subcommand_is_registered():
    parser = make_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert sorted(choices) == sorted(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_lists_flags(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: kerasgemma " + name)
    # Whole words only: "--lora" must not be satisfied by "--lora-rank".
    missing = [flag for flag in EXPECTED_HELP[name]
               if not re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", text)]
    assert not missing, f"`kerasgemma {name} --help` does not show {missing}:\n{text}"


def test_expected_help_covers_every_subcommand():
    assert sorted(EXPECTED_HELP) == sorted(SUBCOMMANDS)


def test_train_help_shows_every_config_field(capsys):
    import dataclasses

    from kerasgemma.config import TrainConfig

    with pytest.raises(SystemExit):
        make_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in text


@pytest.mark.slow
def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "kerasgemma", "--help"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout and "export" in done.stdout


def test_every_config_flag_has_a_description():
    from kerasgemma.commands.config_flags import field_descriptions

    missing = [name for name, text in field_descriptions().items() if not text]
    assert not missing, f"TrainConfig fields without a docstring entry: {missing}"


def test_demo_help_shows_the_demo_defaults():
    import argparse

    from kerasgemma.commands.config_flags import add_config_arguments
    from kerasgemma.demo import DEMO_CONFIG

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, base=DEMO_CONFIG)
    text = " ".join(parser.format_help().split())  # argparse wraps long help lines
    assert f"(default: {DEMO_CONFIG.lora_rank})" in text and f"(default: {DEMO_CONFIG.preset!r})" in text
