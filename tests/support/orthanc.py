"""A real Orthanc (Debian's ``/usr/sbin/Orthanc``) as the PACS of the tests.

``OrthancServer(folder)`` writes a JSON config with its own storage and index under ``folder``,
a free DICOM port and HTTP port on 127.0.0.1, AE title ``PACS``, no called-AE check, no remote
access and no authentication, and no plugins. ``start()`` waits until the REST API answers;
``stop()`` terminates it (SIGTERM, then SIGKILL); ``start()`` again brings it back on the same ports
with the same storage, for "PACS down, then back" tests. Use as a context manager.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.polling import wait_until

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orthanc_available() -> bool:
    return Path(ORTHANC).exists()


class OrthancServer:
    def __init__(self, folder: Path, ae_title: str = "PACS", dicom_port: int | None = None, http_port: int | None = None) -> None:
        self.folder = Path(folder)
        self.ae_title = ae_title
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.process: subprocess.Popen | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path = self.folder / "orthanc.json"
        self.log_path = self.folder / "orthanc.log"
        config = {
            "Name": "test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomServerEnabled": True,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "Plugins": [],
            "StorageCompression": False,
            "HttpCompressionEnabled": False,
            "UnknownSopClassAccepted": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomScpTimeout": 30,
            "StableAge": 1,
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> "OrthancServer":
        if self.process is not None and self.process.poll() is None:
            return self
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [ORTHANC, str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            start_new_session=True,
        )
        log.close()
        if wait_until(self._answering, timeout=timeout, step=0.1):
            return self
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s; see {self.log_path}")

    def _answering(self) -> bool:
        """The REST API and the DICOM port both answer (raises if Orthanc has exited)."""
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.log_path}")
        try:
            self.get("/system")
            return self._dicom_port_open()
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def _dicom_port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.dicom_port)) == 0

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return response.read()

    def instances(self) -> list[str]:
        return self.get("/instances")

    def instance_tags(self, orthanc_id: str) -> dict:
        """``{keyword: value}`` of an instance's main tags (``/instances/{id}/simplified-tags``)."""
        return self.get(f"/instances/{orthanc_id}/simplified-tags")

    def instances_by_sop_uid(self) -> dict[str, dict]:
        found = {}
        for orthanc_id in self.instances():
            tags = self.instance_tags(orthanc_id)
            found[tags["SOPInstanceUID"]] = {"id": orthanc_id, **tags}
        return found

    def download(self, orthanc_id: str, target: Path) -> Path:
        target.write_bytes(self.get_bytes(f"/instances/{orthanc_id}/file"))
        return target

    def statistics(self) -> dict:
        return self.get("/statistics")

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["OrthancServer", "free_port", "orthanc_available"]
