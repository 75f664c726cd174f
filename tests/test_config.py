"""TrainConfig: YAML/JSON round trip, unknown keys, types, and defaults < file < flags."""

import argparse
import json
import logging

import pytest
import yaml

from kerasgemma.config import TrainConfig
from kerasgemma.commands.config_flags import add_config_arguments, config_from_args

CHANGED = TrainConfig(
    preset="tiny:gemma3",
    learning_rate=1e-4,
    lora_alpha=8.0,
    max_grad_norm=None,
    max_steps=7,
    include_chatgpt=True,
    sample_prompts=["中国的首都是哪里？", "1+1=?"],
)


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(argv)


def test_json_round_trip(tmp_path):
    path = tmp_path / "config.json"
    CHANGED.save(path)
    assert TrainConfig.from_file(path) == CHANGED
    # Plain, sorted JSON that another tool can read.
    assert list(json.loads(path.read_text())) == sorted(CHANGED.to_dict())


def test_yaml_round_trip_and_yaml_1_1_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(CHANGED.to_dict(), allow_unicode=True), encoding="utf-8")
    assert TrainConfig.from_file(path) == CHANGED
    # PyYAML reads `1e-4` as a string; the config must still get a float.
    path.write_text("learning_rate: 1e-4\nlora_alpha: 16\nmax_steps: null\n")
    config = TrainConfig.from_file(path)
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert config.lora_alpha == 16.0 and config.max_steps is None


def test_unknown_keys_warn_and_are_ignored_when_allowed(tmp_path, caplog):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"lora_rank": 8, "lora_dropout": 0.1, "bogus": 1}))
    with pytest.raises(ValueError, match="unknown setting 'bogus'"):
        TrainConfig.from_file(path)
    with caplog.at_level(logging.WARNING, logger="kerasgemma.config"):
        config = TrainConfig.from_file(path, allow_unknown_keys=True)
    assert config.lora_rank == 8
    assert "Ignoring unknown config keys: bogus, lora_dropout" in caplog.text


def test_bad_values_and_files_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="'lora_rank': expected int, got 'four'"):
        TrainConfig.from_dict({"lora_rank": "four"})
    with pytest.raises(ValueError, match="expected bool"):
        TrainConfig.from_dict({"include_chatgpt": "yes"})
    path = tmp_path / "run.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        TrainConfig.from_file(path)
    with pytest.raises(FileNotFoundError, match="Config file not found"):
        TrainConfig.from_file(tmp_path / "missing.yaml")


def test_precedence_defaults_then_file_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 2.0e-4\nlora_rank: 8\nbatch_size: 2\n")
    config = config_from_args(_parse(["--config", str(path), "--lr", "1e-3", "--rank", "16"]))
    assert config.learning_rate == 1e-3 and config.lora_rank == 16  # flags win
    assert config.batch_size == 2  # from the file
    assert config.sequence_length == TrainConfig().sequence_length  # default
    # A command's own defaults (like the demo's) sit under the file.
    base = TrainConfig(preset="tiny:gemma", batch_size=16, epochs=3)
    config = config_from_args(_parse(["--config", str(path)]), base=base)
    assert (config.preset, config.batch_size, config.epochs) == ("tiny:gemma", 2, 3)


def test_flag_kinds():
    args = _parse(
        ["--max-grad-norm", "none", "--include-chatgpt", "--sample-prompts", "问一", "问二", "--max-steps", "5"]
    )
    config = config_from_args(args)
    assert config.max_grad_norm is None and config.include_chatgpt is True
    assert config.sample_prompts == ["问一", "问二"] and config.max_steps == 5
    assert config_from_args(_parse(["--no-include-chatgpt"]), base=CHANGED).include_chatgpt is False
