"""Admin commands through the CLI front: exit codes, one problem per line, C-ECHO outcomes."""

from __future__ import annotations

import re
import socket
import subprocess

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_node.cli import main
from tests.support.paths import REPO
from tests.support.polling import wait_until

PROBLEM_LINE = re.compile(r"^(?P<key>[\w.\[\]-]+) = (?P<value>.+): (?P<why>.+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def config_file(tmp_path):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not read by check-config")
    path = tmp_path / "node.toml"
    path.write_text(
        f"""# test node
[node]
ae_title = "M2UNET"
port = 11112
data_dir = "{tmp_path / 'var'}"

[model]
weights = "{weights}"

[[sources]]
ae_title = "CT_1"
"""
    )
    return path


def run(capsys, *argv) -> tuple[int, list[str], list[str]]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def test_check_config_ok(capsys, config_file):
    code, out, err = run(capsys, "--config", str(config_file), "check-config")
    assert code == 0 and err == []
    assert out == [f"{config_file}: ok (1 source(s), 0 destination(s), node M2UNET on 0.0.0.0:11112)"]


def test_check_config_prints_each_problem_on_its_own_line_and_exits_2(capsys, config_file):
    config_file.write_text(
        config_file.read_text().replace("port = 11112", "port = 70000\nseries_timout = 5")
        + '\n[[sources]]\nae_title = "CT\\\\2"\nhost = "bad host"\n'
    )
    code, out, err = run(capsys, "--config", str(config_file), "check-config")
    assert code == 2 and out == []
    *problems, summary = err
    assert summary == f"{config_file}: 4 problem(s)"
    parsed = [PROBLEM_LINE.match(line).groupdict() for line in problems]
    assert [(p["key"], p["value"]) for p in parsed] == [
        ("node.port", "70000"),
        ("node.series_timout", "5"),
        ("sources[1].ae_title", '"CT\\\\2"'),
        ("sources[1].host", '"bad host"'),
    ]
    assert parsed[0]["why"] == "must be between 1 and 65535"
    assert "did you mean 'series_timeout'" in parsed[1]["why"]


def test_check_config_of_a_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "--config", str(tmp_path / "none.toml"), "check-config")
    assert code == 2 and "cannot read" in err[0]


def test_config_path_from_the_environment(capsys, config_file, monkeypatch):
    monkeypatch.setenv("M2UNET_CONFIG", str(config_file))
    code, out, _ = run(capsys, "check-config")
    assert code == 0 and out[0].startswith(str(config_file))


def test_ae_add_list_remove(capsys, config_file):
    code, out, _ = run(capsys, "--config", str(config_file), "ae", "add", "CT_2", "--host", "10.0.0.2")
    assert code == 0 and "added source CT_2 from 10.0.0.2" in out[0]
    code, out, _ = run(capsys, "--config", str(config_file), "ae", "list")
    assert code == 0
    assert [line.split() for line in out] == [["AE_TITLE", "HOST", "SERIES_TIMEOUT"], ["CT_1", "any", "-"], ["CT_2", "10.0.0.2", "-"]]
    code, out, _ = run(capsys, "--config", str(config_file), "ae", "remove", "CT_1")
    assert code == 0 and "removed source CT_1" in out[0]
    assert config_file.read_text().startswith("# test node\n")
    code, _, err = run(capsys, "--config", str(config_file), "ae", "remove", "CT_1")
    assert code == 2
    assert err == ['AE_TITLE = "CT_1": no such source in [[sources]]', f"{config_file}: not changed"]


def test_ae_add_refuses_bad_titles_with_exit_2(capsys, config_file):
    before = config_file.read_text()
    code, out, err = run(capsys, "--config", str(config_file), "ae", "add", "A_TITLE_LONGER_THAN_16")
    assert code == 2 and out == []
    assert err[0] == 'AE_TITLE = "A_TITLE_LONGER_THAN_16": must be at most 16 characters (has 22)'
    assert config_file.read_text() == before


def test_dest_add_list_remove(capsys, config_file):
    code, out, _ = run(capsys, "--config", str(config_file), "dest", "add", "pacs", "ORTHANC", "127.0.0.1", "4242")
    assert code == 0 and "dest echo pacs" in out[1]
    code, out, _ = run(capsys, "--config", str(config_file), "dest", "list")
    assert [line.split() for line in out] == [["NAME", "AE_TITLE", "HOST", "PORT", "TLS"], ["pacs", "ORTHANC", "127.0.0.1", "4242", "no"]]
    code, _, err = run(capsys, "--config", str(config_file), "dest", "add", "pacs2", "ORTHANC", "127.0.0.1", "port")
    assert code == 2 and err[0] == 'PORT = "port": must be an integer between 1 and 65535'
    code, _, _ = run(capsys, "--config", str(config_file), "dest", "remove", "pacs")
    assert code == 0
    code, out, _ = run(capsys, "--config", str(config_file), "dest", "list")
    assert out[-1].startswith("note: no destinations: results stay under")


def test_list_of_an_invalid_config_exits_2(capsys, config_file):
    config_file.write_text(config_file.read_text() + "[oops]\n")
    code, out, err = run(capsys, "--config", str(config_file), "ae", "list")
    assert code == 2 and out == []
    assert err[0].startswith("oops = {...}: unknown key")


def wait_listening(port: int, timeout: float = 10.0) -> None:
    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    if not wait_until(listening, timeout=timeout, step=0.05):
        raise TimeoutError(f"nothing listens on {port}")


def test_dest_echo_success_against_dcmtk_storescp(capsys, config_file, tmp_path):
    port = free_port()
    scp = subprocess.Popen(
        ["storescp", "-aet", "PACS", "-od", str(tmp_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        run(capsys, "--config", str(config_file), "dest", "add", "pacs", "PACS", "127.0.0.1", str(port))
        code, out, err = run(capsys, "--config", str(config_file), "dest", "echo", "pacs")
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    assert code == 0 and err == []
    assert re.fullmatch(rf"C-ECHO pacs \(PACS at 127\.0\.0\.1:{port}\): success in \d+ ms", out[0])


def test_dest_echo_reports_a_refused_connection_with_exit_1(capsys, config_file):
    port = free_port()  # nothing listens there
    run(capsys, "--config", str(config_file), "dest", "add", "pacs", "PACS", "127.0.0.1", str(port))
    code, out, err = run(capsys, "--config", str(config_file), "dest", "echo", "pacs")
    assert code == 1 and out == []
    assert err == [f"C-ECHO pacs (PACS at 127.0.0.1:{port}): failed: cannot connect to 127.0.0.1:{port}: Connection refused"]


def test_dest_echo_reports_a_rejected_association(capsys, config_file):
    port = free_port()
    scp = AE(ae_title="REAL_PACS")
    scp.require_called_aet = True
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", port), block=False)
    try:
        run(capsys, "--config", str(config_file), "dest", "add", "pacs", "WRONG_TITLE", "127.0.0.1", str(port))
        code, _, err = run(capsys, "--config", str(config_file), "dest", "echo", "pacs")
    finally:
        server.shutdown()
    assert code == 1
    assert "association rejected" in err[0] and "Called AE title not recognised" in err[0]


def test_dest_echo_of_an_unknown_name_exits_2(capsys, config_file):
    code, _, err = run(capsys, "--config", str(config_file), "dest", "echo", "nope")
    assert code == 2 and err == ['NAME = "nope": no such destination (configured: none)']


def test_console_script_check_config_of_the_shipped_file():
    """The installed entry point on config/node.toml: the newcomer's first command."""
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "m2unet-node"), "check-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config/node.toml: ok (1 source(s), 0 destination(s)")
