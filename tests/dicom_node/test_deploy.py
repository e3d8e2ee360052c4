"""deploy/: what can be checked without a container engine or a systemd host.

The unit goes through ``systemd-analyze verify`` and ``systemd-analyze security --offline``; the
compose file and the Containerfiles are parsed and held against the repository (paths copied,
ports, configs); the compose configs must pass validation, and Orthanc must start on its config.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
import urllib.request
from pathlib import Path

import pytest

from dicom_node.config.validation import validate_config
from tests.support.dcmtk import tool
from tests.support.paths import REPO
from tests.support.polling import wait_until

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "m2unet-node.service"
NODE_BIN = REPO / ".venv" / "bin" / "m2unet-node"


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file, every value of repeated keys kept."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture
def local_unit(tmp_path):
    """The unit with its ExecStart pointing at this checkout's console script (verify needs it)."""
    path = tmp_path / "m2unet-node.service"
    path.write_text(UNIT.read_text().replace("/opt/m2unet-node/.venv/bin/m2unet-node", str(NODE_BIN)))
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(local_unit):
    result = subprocess.run(["systemd-analyze", "verify", str(local_unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout + result.stderr == ""  # verify only warns on unknown values: none allowed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_is_sandboxed(local_unit):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(local_unit)], capture_output=True, text=True, timeout=60
    )
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert exposure, result.stdout[-500:]
    assert float(exposure.group(1)) < 3.0  # "OK" or better on systemd's 0-10 scale


def test_unit_runs_as_a_dedicated_user_with_state_under_var_lib():
    s = unit_settings(UNIT.read_text())
    assert s["User"] == ["m2unet"] and s["Group"] == ["m2unet"]
    assert s["ExecStart"] == ["/opt/m2unet-node/.venv/bin/m2unet-node run"]
    assert s["ExecStartPre"] == ["/opt/m2unet-node/.venv/bin/m2unet-node check-config"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["Environment"][0] == "M2UNET_CONFIG=/etc/m2unet-node/node.toml"
    assert s["StateDirectory"] == ["m2unet-node"] and s["ReadWritePaths"] == ["/var/lib/m2unet-node"]
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert s[hardening] == ["yes"], hardening
    assert s["ProtectSystem"] == ["strict"]
    sysusers = (DEPLOY / "m2unet-node.sysusers.conf").read_text()
    assert re.search(r"^u\s+m2unet\s+-\s+\".+\"\s+/var/lib/m2unet-node$", sysusers, re.M)


def containerfile_instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, joined = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        joined += raw.rstrip("\\").rstrip() + " " if raw.endswith("\\") else raw
        if not raw.endswith("\\"):
            lines.append(joined.strip())
            joined = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("name", ["Containerfile.cpu", "Containerfile.cuda"])
def test_containerfiles_copy_what_exists_and_run_the_node(name):
    instructions = containerfile_instructions(DEPLOY / name)
    kinds = [kind for kind, _ in instructions]
    assert kinds.count("FROM") == 2  # build stage, runtime stage
    for kind, args in instructions:
        if kind == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"{name}: COPY {source} does not exist"
    args = dict(reversed(instructions))  # the first of each kind
    assert args["USER"] == "m2unet"
    assert args["EXPOSE"] == str(tomllib.loads((REPO / "config/node.toml").read_text())["node"]["port"])
    assert json.loads(args["ENTRYPOINT"]) == ["m2unet-node"]
    assert json.loads(dict(instructions)["CMD"]) == ["run"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "m2unet-node" in scripts
    text = (DEPLOY / name).read_text()
    # the build rewrites data_dir in the shipped config: the line it rewrites must be there
    assert "sed -i 's|^data_dir = .*|data_dir = \"/var/lib/m2unet-node\"|'" in text
    assert re.search(r"^data_dir = ", (REPO / "config/node.toml").read_text(), re.M)
    # the same torch as the Makefile installs
    makefile_torch = re.search(r"torch==([\d.]+)", (REPO / "Makefile").read_text()).group(1)
    assert f"ARG TORCH_VERSION={makefile_torch}" in text
    assert ("whl/cpu" in text) == (name == "Containerfile.cpu")


def test_compose_wires_the_node_to_orthanc():
    yaml = pytest.importorskip("yaml", reason="PyYAML (the test extra) parses the compose file")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"orthanc", "m2unet-node"}
    node, orthanc = services["m2unet-node"], services["orthanc"]
    assert (DEPLOY / node["build"]["context"] / node["build"]["dockerfile"]).is_file()
    assert node["depends_on"] == ["orthanc"]
    for service in (node, orthanc):
        for volume in service["volumes"]:
            source, target, *_ = volume.split(":")
            if source.startswith("./"):
                assert (DEPLOY / source).is_dir(), source  # folders, so renamed files are seen
            else:
                assert source in compose["volumes"], source
    assert "m2unet-data:/var/lib/m2unet-node" in node["volumes"]

    node_config_dir = DEPLOY / "compose" / "m2unet-node"
    config = tomllib.loads((node_config_dir / "node.toml").read_text())
    assert validate_config(config, config_dir=node_config_dir) == []
    orthanc_config = json.loads((DEPLOY / "compose" / "orthanc" / "orthanc.json").read_text())
    # the node sends to Orthanc, and Orthanc knows the node as a modality
    [destination] = config["destinations"]
    assert (destination["ae_title"], destination["host"], destination["port"]) == (
        orthanc_config["DicomAet"],
        "orthanc",
        orthanc_config["DicomPort"],
    )
    assert ["ORTHANC", "orthanc"] in [[s["ae_title"], s.get("host")] for s in config["sources"]]
    assert orthanc_config["DicomModalities"]["m2unet"] == [config["node"]["ae_title"], "m2unet-node", config["node"]["port"]]
    assert f"127.0.0.1:{config['node']['port']}:{config['node']['port']}" in node["ports"]
    assert config["node"]["data_dir"] == "/var/lib/m2unet-node"


def test_compose_node_config_passes_check_config(tmp_path):
    assert check_compose_config(DEPLOY / "compose" / "m2unet-node" / "node.toml", tmp_path).returncode == 0


def check_compose_config(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``m2unet-node check-config`` on a compose config, its data_dir in ``tmp_path`` and its
    weights a stand-in (the image ships the real ones); returns the run (stderr: the problems).
    The checked copy is ``tmp_path/node.toml``."""
    text = path.read_text()
    (tmp_path / "w.pt").write_bytes(b"stand-in")
    text = text.replace('data_dir = "/var/lib/m2unet-node"', f'data_dir = "{tmp_path}"')
    text = text.replace("[model]\n", f'[model]\nweights = "{tmp_path / "w.pt"}"\n')
    (tmp_path / "node.toml").write_text(text)
    result = subprocess.run([str(NODE_BIN), "--config", str(tmp_path / "node.toml"), "check-config"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc not installed")
def test_orthanc_starts_on_the_compose_config(tmp_path):
    from tests.support.orthanc import free_port

    config = json.loads((DEPLOY / "compose" / "orthanc" / "orthanc.json").read_text())
    http_port, dicom_port = free_port(), free_port()
    config.update(StorageDirectory=str(tmp_path / "db"), IndexDirectory=str(tmp_path / "db"), HttpPort=http_port, DicomPort=dicom_port)
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(["Orthanc", str(tmp_path / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/modalities")
        password = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        password.add_password(None, f"http://127.0.0.1:{http_port}/", "orthanc", "orthanc")
        opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(password))

        def answer() -> list | None:
            """``[the modalities Orthanc lists]`` once it answers; None before."""
            try:
                with opener.open(request, timeout=2) as response:
                    return [json.loads(response.read())]
            except OSError:
                if process.poll() is not None:
                    pytest.fail("Orthanc exited on the compose config")
                return None

        answered = wait_until(answer, timeout=30, step=0.1)
        if not answered:
            pytest.fail("Orthanc did not answer")
        [modalities] = answered
        assert modalities == ["m2unet"]
        echo = subprocess.run([tool("echoscu"), "-aec", config["DicomAet"], "127.0.0.1", str(dicom_port)], capture_output=True, timeout=30)
        assert echo.returncode == 0
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- scale-out: Redis, the node and Celery workers ------------------------------------------------

WORKER_UNIT = DEPLOY / "m2unet-worker@.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_worker_unit_passes_systemd_analyze_verify(tmp_path):
    path = tmp_path / "m2unet-worker@.service"
    path.write_text(WORKER_UNIT.read_text().replace("/opt/m2unet-node/.venv/bin/m2unet-node", str(NODE_BIN)))
    instance = tmp_path / "m2unet-worker@0.service"
    instance.symlink_to(path)
    result = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_worker_unit_runs_one_worker_on_the_gpu_of_its_instance():
    settings = unit_settings(WORKER_UNIT.read_text())
    assert settings["ExecStart"] == ["/opt/m2unet-node/.venv/bin/m2unet-node worker --device cuda:%i --name %H-cuda%i"]
    assert settings["KillSignal"] == ["SIGTERM"] and settings["User"] == ["m2unet"]
    assert "/dev/nvidia%i rw" in settings["DeviceAllow"]


def test_scale_compose_shares_data_and_config_between_node_and_workers(tmp_path):
    yaml = pytest.importorskip("yaml", reason="PyYAML (the test extra) parses the compose file")
    compose = yaml.safe_load((DEPLOY / "compose.scale.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "orthanc", "m2unet-node", "m2unet-worker"}
    node, worker = services["m2unet-node"], services["m2unet-worker"]
    assert set(node["volumes"]) == set(worker["volumes"])  # same data_dir, same config
    assert worker["command"][:2] == ["m2unet-node", "worker"]
    assert "--appendonly" in services["redis"]["command"]
    config_dir = DEPLOY / "compose" / "m2unet-celery"
    assert any(v.startswith("./compose/m2unet-celery:") for v in node["volumes"])
    check_compose_config(config_dir / "node.toml", tmp_path)
    from dicom_node.config.model import load_config

    pipeline = load_config(tmp_path / "node.toml").pipeline
    assert (pipeline.executor, pipeline.broker_url) == ("celery", "redis://redis:6379/0")
