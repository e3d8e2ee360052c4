"""A real Debian ``redis-server`` on a free loopback port, in a temporary folder, with AOF on (as
the Celery executor is deployed), for the scale-out tests.

    with RedisServer(tmp_path / "redis") as redis:
        redis.url                 # redis://127.0.0.1:PORT/0
        redis.stop(); redis.start()   # the same data folder: what was queued survives
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
from pathlib import Path

from tests.support.node_process import free_port
from tests.support.polling import wait_until


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        atexit.register(self._kill)
        if wait_until(self._answers, timeout=timeout, step=0.1):
            return self
        self._kill()
        raise TimeoutError("redis-server did not answer PING")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
