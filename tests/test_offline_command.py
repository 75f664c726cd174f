"""`kerasgemma offline-model`: flags, and the preset path as the last line."""


from helpers import parse_subcommand

from kerasgemma import cli
from kerasgemma.commands import offline_model as command
from kerasgemma.offline import preset


def parse(argv):
    return parse_subcommand(command, "offline-model", argv)


def test_prints_path_last(monkeypatch, capsys, tmp_path):
    calls = []

    def fake_build(cache_dir=None, force=False, progress=True):
        calls.append((cache_dir, force))
        print("progress chatter")
        return str(tmp_path / preset.OFFLINE_PRESET_NAME)

    monkeypatch.setattr(command, "build_offline_preset", fake_build)
    args = parse(["--cache-dir", str(tmp_path), "--force"])
    assert command.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == str(tmp_path / preset.OFFLINE_PRESET_NAME)
    assert calls == [(str(tmp_path), True)]


def test_missing_package_is_a_clear_error(monkeypatch, capsys):
    def fake_build(cache_dir=None, force=False, progress=True):
        raise ImportError("The offline Gemma 3 270M needs its PyPI packages")

    monkeypatch.setattr(command, "build_offline_preset", fake_build)
    assert cli.main(["offline-model"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("kerasgemma offline-model: error: The offline Gemma 3 270M needs")
