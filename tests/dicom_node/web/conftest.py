"""A real ``m2unet-node run`` with the console enabled, and users whose hashes the tests make."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from tests.support.node_process import NodeProcess, free_port
from tests.support.polling import wait_until
from tests.support.web_client import WebClient

ADMIN, ADMIN_PASSWORD = "admin", "admin-password-1"
VIEWER, VIEWER_PASSWORD = "viewer", "viewer-password-1"


def web_config(port: int, **extra) -> dict:
    hasher = PasswordHasher()
    config = {
        "sources": [{"ae_title": "KEEPER"}],
        "web": {"enabled": True, "host": "127.0.0.1", "port": port},
        "web_users": [
            {"name": ADMIN, "role": "admin", "password_hash": hasher.hash(ADMIN_PASSWORD)},
            {"name": VIEWER, "role": "viewer", "password_hash": hasher.hash(VIEWER_PASSWORD)},
        ],
    }
    config.update(extra)
    return config


def start_web_node(tmp_path, name: str = "node", **extra) -> tuple[NodeProcess, int]:
    """Start the node and wait until its console answers; returns it and the console's port."""
    port = free_port()
    node = NodeProcess(web_config(port, **extra), tmp_path, name=name).start()

    def answering() -> bool:
        try:
            return WebClient(port).get("/login").status == 200
        except OSError:
            return False

    if not wait_until(answering, timeout=30, step=0.2):
        node.stop()
        raise AssertionError(f"console never answered:\n{node.log_text()[-3000:]}")
    return node, port


@pytest.fixture(scope="module")
def web_node(tmp_path_factory):
    node, port = start_web_node(tmp_path_factory.mktemp("web"))
    yield node, port
    assert node.stop() == 0


def logged_in(port: int, user: str = ADMIN, password: str = ADMIN_PASSWORD) -> WebClient:
    client = WebClient(port)
    response = client.login(user, password)
    assert response.status == 200, response.body
    return client


def reloads(node: NodeProcess) -> int:
    """How many times the node has applied a changed config (``config_reloaded`` log lines)."""
    return sum(1 for e in node.log_events() if e.get("event") == "config_reloaded")


def wait_reloaded(node: NodeProcess, before: int, timeout: float = 15.0) -> None:
    assert wait_until(lambda: reloads(node) > before, timeout=timeout, step=0.2), node.log_text()[-2000:]
