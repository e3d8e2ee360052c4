"""A real ``m2unet-node run`` in a subprocess, for end-to-end tests.

    node = NodeProcess({"sources": [{"ae_title": "SCANNER"}]}, tmp_path).start()
    node.port, node.data_dir, node.ae_title
    node.echo()                      # True when it answers C-ECHO
    node.status_json()               # `m2unet-node status --json`, parsed
    node.wait_for_series(uid, states=("queued",), timeout=20)
    node.stop()                      # SIGTERM; returns the exit code
    node.kill()                      # SIGKILL (crash tests); start() again on the same data_dir
    node.log_text()

``config`` is TOML text or a dict. A dict is merged over defaults: ``[node]`` gets a free loopback
port, ``data_dir = <tmp_path>/data``, ``ae_title = "M2UNET"``, ``series_timeout = 1``,
``log_format = "json"``. With ``[tls] enabled``, readiness is the port accepting connections
(use DCMTK's ``echoscu +tls`` to talk to it). TOML text is used as given, except that ``{port}`` and ``{data_dir}`` are
filled in. Also a context manager (stops on exit).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import tomlkit

from tests.support.paths import REPO
from tests.support.polling import wait_until

DEFAULT_AE_TITLE = "M2UNET"


def _kill_if_running(proc: subprocess.Popen) -> None:
    """At interpreter exit: a node a test forgot to stop must not outlive the test run."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def json_events(text: str) -> list[dict]:
    """The JSON lines of a log, parsed (other lines are skipped)."""
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo(
    port: int,
    called_ae: str = DEFAULT_AE_TITLE,
    calling_ae: str = "ECHOSCU",
    host: str = "127.0.0.1",
    timeout: float = 5.0,
    rejected_is_alive: bool = False,
) -> bool:
    """One C-ECHO with pynetdicom; True on status 0x0000 (or, with ``rejected_is_alive``, on an
    A-ASSOCIATE-RJ: the node is up but does not accept ``calling_ae``)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return rejected_is_alive and assoc.is_rejected
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


class NodeProcess:
    def __init__(self, config: str | dict | None, tmp_path: str | os.PathLike, name: str = "node") -> None:
        self.tmp_path = Path(tmp_path)
        self.folder = self.tmp_path / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path = self.folder / "node.toml"
        self.log_path = self.folder / "node.log"
        self.port = free_port()
        self.data_dir = self.folder / "data"
        self.ae_title = DEFAULT_AE_TITLE
        self.echo_ae = "ECHOSCU"
        self.tls = False
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.write_config(config)

    # -- config --

    def write_config(self, config: str | dict | None) -> None:
        """(Re)write the config file; with a running node, follow with :meth:`reload`."""
        if isinstance(config, str):
            text = config.replace("{port}", str(self.port)).replace("{data_dir}", str(self.data_dir))
            doc = tomlkit.parse(text)
        else:
            doc = tomlkit.document()
            merged = dict(config or {})
            node = {
                "ae_title": DEFAULT_AE_TITLE,
                "host": "127.0.0.1",
                "port": self.port,
                "data_dir": str(self.data_dir),
                "series_timeout": 1,
                "log_format": "json",
            }
            node.update(merged.pop("node", {}))
            doc["node"] = node
            for key, value in merged.items():
                doc[key] = value
            text = tomlkit.dumps(doc)
        self.tls = bool(doc.get("tls", {}).get("enabled", False))
        sources = doc.get("sources", [])
        self.echo_ae = str(sources[0]["ae_title"]) if sources else "ECHOSCU"
        node_table = doc.get("node", {})
        self.ae_title = node_table.get("ae_title", DEFAULT_AE_TITLE)
        self.port = int(node_table.get("port", self.port))
        self.data_dir = Path(node_table.get("data_dir", self.data_dir))
        self.config_path.write_text(text, encoding="utf-8")

    # -- process --

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "dicom_node.cli", "--config", str(self.config_path), *args]

    def start(self, timeout: float = 60.0) -> "NodeProcess":
        """Start ``m2unet-node run`` and wait until it answers C-ECHO (raises if it never does)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("node already running")
        self._log_file = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.command("run"), cwd=REPO, stdout=self._log_file, stderr=subprocess.STDOUT, env=env
        )
        atexit.register(_kill_if_running, self.proc)
        quiet = logging.getLogger("pynetdicom")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # "connection refused" while the node starts is expected
        try:
            if wait_until(self._answering, timeout=timeout, step=0.2):
                return self
        finally:
            quiet.setLevel(level)
        self.kill()
        raise TimeoutError(f"node did not answer C-ECHO within {timeout} s:\n{self.log_text()[-4000:]}")

    def _raise_if_exited(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")

    def _answering(self) -> bool:
        """Up: it answers C-ECHO (TLS: its port accepts connections); raises if it has exited."""
        self._raise_if_exited()
        return self._listening() if self.tls else self.echo(timeout=2.0, rejected_is_alive=True)

    def _listening(self) -> bool:
        """For a TLS node (no TLS client here): its port accepts TCP connections."""
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def echo(self, timeout: float = 5.0, calling_ae: str | None = None, rejected_is_alive: bool = False) -> bool:
        """C-ECHO as ``calling_ae`` (default: the first ``[[sources]]`` AE title, else ECHOSCU)."""
        try:
            return echo(
                self.port,
                called_ae=self.ae_title,
                calling_ae=calling_ae or self.echo_ae,
                timeout=timeout,
                rejected_is_alive=rejected_is_alive,
            )
        except Exception:
            return False

    def reload(self) -> None:
        """SIGHUP: the node re-reads its config."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait; returns the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self._finish()

    def kill(self) -> int | None:
        """SIGKILL: a crash at an arbitrary instant."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return self._finish()

    def _finish(self) -> int | None:
        rc = self.proc.returncode if self.proc else None
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return rc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- what it did --

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict]:
        """The JSON log lines, parsed (other lines are skipped)."""
        return json_events(self.log_text())

    def run_cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout)

    def status_json(self) -> dict:
        out = self.run_cli("status", "--json")
        if out.returncode != 0:
            raise RuntimeError(f"status failed ({out.returncode}): {out.stderr}")
        return json.loads(out.stdout)

    def series_status(self, series_instance_uid: str) -> dict | None:
        for s in self.status_json()["series"]:
            if s["series_instance_uid"] == series_instance_uid:
                return s
        return None

    def wait_for_series(self, series_instance_uid: str, states=("queued",), timeout: float = 30.0) -> dict:
        """Poll the database until the series is in one of ``states``; returns its status entry."""
        from dicom_node.state import db

        last = None

        def reached() -> bool:
            nonlocal last
            if (self.data_dir / db.DB_FILENAME).exists():
                conn = db.connect(self.data_dir)
                try:
                    last = db.get_series(conn, series_instance_uid)
                finally:
                    conn.close()
                if last is not None and last.state in states:
                    return True
            self._raise_if_exited()
            return False

        if wait_until(reached, timeout=timeout, step=0.2):
            return self.series_status(series_instance_uid)
        raise TimeoutError(f"series never reached {states}; last: {last}")

    def __enter__(self) -> "NodeProcess":
        return self if self.running else self.start()

    def __exit__(self, *exc) -> None:
        if self.running:
            self.stop()


class InProcessSCP:
    """The node's receiving half in this process (SCP, spool, database, assembler) on a free port:
    cheaper than a subprocess for tests of the SCP itself.

        with InProcessSCP(tmp_path, sources=("SCANNER",)) as scp:
            storescu(scp.port, files)
            scp.conn  # the database
    """

    def __init__(
        self,
        tmp_path: str | os.PathLike,
        sources=("SCANNER",),
        series_timeout: float = 1.0,
        ssl_context=None,
        **node_settings,
    ) -> None:
        from dicom_node.config.model import NodeConfig, NodeSettings, Source

        self.port = free_port()
        self.data_dir = Path(tmp_path) / "scp-data"
        self.ae_title = node_settings.pop("ae_title", DEFAULT_AE_TITLE)
        srcs = tuple(s if isinstance(s, Source) else Source(ae_title=s) for s in sources)
        self.config = NodeConfig(
            node=NodeSettings(
                ae_title=self.ae_title,
                host="127.0.0.1",
                port=self.port,
                data_dir=self.data_dir,
                series_timeout=series_timeout,
                **node_settings,
            ),
            sources=srcs,
        )
        self.ssl_context = ssl_context

    def start(self) -> "InProcessSCP":
        from dicom_node.state import db
        from dicom_node.series.assembler import Assembler
        from dicom_node.ingest.receive import Receiver
        from dicom_node.ingest.scp import StorageSCP
        from dicom_node.ingest.spool import Spool

        self.conn = db.connect(self.data_dir)
        self.spool = Spool(self.data_dir)
        provider = lambda: self.config  # noqa: E731
        self.assembler = Assembler(self.data_dir, provider)
        self.scp = StorageSCP(
            provider,
            Receiver(self.conn, self.spool, "1.2.826.0.1.3680043.8.498.1", "M2UNET_TEST"),
            on_instance=self.assembler.instance_arrived,
            ssl_context=self.ssl_context,
        )
        self.assembler.start()
        self.scp.start()
        return self

    def stop(self) -> None:
        self.scp.stop(grace_s=2.0)
        self.assembler.stop()
        self.conn.close()

    def wait_for_state(self, series_instance_uid: str, states=("queued",), timeout: float = 20.0):
        from dicom_node.state import db

        def reached():
            record = db.get_series(self.conn, series_instance_uid)
            return record if record is not None and record.state in states else None

        record = wait_until(reached, timeout=timeout, step=0.05)
        if record is None:
            raise TimeoutError(f"series never reached {states}; last: {db.get_series(self.conn, series_instance_uid)}")
        return record

    def __enter__(self) -> "InProcessSCP":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def receive_file(receiver, path, calling_ae: str = "SCANNER", accept_other_storage: bool = False):
    """Hand a Part 10 file's dataset bytes to a ``dicom_node.ingest.receive.Receiver`` as the SCP would
    (no network); asserts success and returns the ``RecordResult``."""
    import pydicom

    from dicom_node.ingest.receive import StoreStatus

    path = Path(path)
    meta = pydicom.filereader.read_file_meta_info(path)
    raw = path.read_bytes()
    start = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    result = receiver.receive(
        raw[start:],
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
        meta.TransferSyntaxUID,
        calling_ae,
        accept_other_storage,
    )
    assert result.status == StoreStatus.SUCCESS, result
    return result.record
