"""The argparse front: every INTERFACES.md command parses, --config works before or after it."""

from __future__ import annotations

import pytest

from dicom_node.cli import build_parser, main


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["run"], {"command": "run", "config": None}),
        (["--config", "a.toml", "check-config"], {"command": "check-config", "config": "a.toml"}),
        (["check-config", "--config", "b.toml"], {"command": "check-config", "config": "b.toml"}),
        (["ae", "list", "--config", "c.toml"], {"command": "ae", "action": "list", "config": "c.toml"}),
        (["ae", "add", "CT_1", "--host", "10.0.0.1"], {"action": "add", "ae_title": "CT_1", "host": "10.0.0.1"}),
        (["ae", "remove", "CT_1"], {"action": "remove", "ae_title": "CT_1"}),
        (["dest", "add", "pacs", "PACS", "10.0.0.2", "104"], {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.2", "port": "104"}),
        (["dest", "echo", "pacs"], {"action": "echo", "name": "pacs"}),
        (["dest", "remove", "pacs"], {"action": "remove", "name": "pacs"}),
        (["status", "--json"], {"command": "status", "json": True}),
        (["retry", "1.2.3", "--config", "d.toml"], {"command": "retry", "series_uid": "1.2.3", "config": "d.toml"}),
        (["process", "in", "--out", "out"], {"series_dir": "in", "out": "out"}),
        (["send-demo", "--port", "11112"], {"command": "send-demo", "port": 11112, "host": None}),
    ],
)
def test_commands_parse(argv, expected):
    args = vars(build_parser().parse_args(argv))
    assert {k: args[k] for k in expected} == expected


@pytest.mark.parametrize(
    "argv",
    [[], ["ae"], ["ae", "rename", "X"], ["dest", "add", "pacs", "PACS"], ["send-demo", "--port", "x"], ["unknown"]],
)
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    assert "usage: m2unet-node" in capsys.readouterr().err


def test_help_names_every_command_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("run", "check-config", "ae", "dest", "process", "status", "retry", "send-demo"):
        assert f"\n    {command}" in text
    assert "M2UNET_CONFIG" in text and "exit status" in text


def test_edit_commands_say_no_restart_is_needed(capsys):
    with pytest.raises(SystemExit):
        main(["ae", "add", "--help"])
    assert "no restart" in " ".join(capsys.readouterr().out.split())
