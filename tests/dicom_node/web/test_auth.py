"""Logins, sessions, CSRF and roles of the console, over HTTP against a running node."""

from __future__ import annotations

import subprocess

from tests.dicom_node.web.conftest import ADMIN, ADMIN_PASSWORD, VIEWER, VIEWER_PASSWORD, logged_in, reloads, wait_reloaded
from tests.support.polling import wait_until
from tests.support.web_client import WebClient


def test_login_sets_a_strict_http_only_cookie_and_returns_a_csrf_token(web_node):
    node, port = web_node
    client = WebClient(port)
    response = client.login(ADMIN, ADMIN_PASSWORD)
    assert response.status == 200
    body = response.json()
    assert body["user"] == ADMIN and body["role"] == "admin" and len(body["csrf_token"]) >= 32
    (cookie,) = response.set_cookies
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "secure" not in attributes  # plain HTTP here; Secure when served over TLS
    assert client.get("/api/status").status == 200


def test_wrong_password_and_unknown_user_are_refused(web_node):
    _, port = web_node
    for user, password in ((ADMIN, "not-the-password"), ("nobody", ADMIN_PASSWORD)):
        response = WebClient(port).login(user, password)
        assert response.status == 401
        assert response.set_cookies == []


def test_every_api_call_without_a_session_is_refused(web_node):
    _, port = web_node
    client = WebClient(port)
    for method, path in (
        ("GET", "/api/status"),
        ("GET", "/api/sources"),
        ("GET", "/api/destinations"),
        ("GET", "/api/series/1.2.3"),
        ("GET", "/api/series/1.2.3/summary.png"),
        ("POST", "/api/sources"),
        ("DELETE", "/api/sources/KEEPER"),
        ("POST", "/api/destinations/pacs/echo"),
        ("POST", "/api/series/1.2.3/retry"),
    ):
        response = client.request(method, path, {"ae_title": "X"} if method == "POST" else None)
        assert response.status == 401, (method, path, response.body)
    forged = WebClient(port)
    forged.cookies["m2unet_session"] = "made-up-token"
    assert forged.get("/api/status").status == 401
    page = client.get("/")
    assert page.status == 303 and page.headers["location"] == "/login"


def test_a_change_without_the_csrf_token_is_refused_and_the_file_unchanged(web_node):
    node, port = web_node
    client = logged_in(port)
    before = node.config_path.read_bytes()
    for csrf in ("", "wrong-token"):
        response = client.post("/api/sources", {"ae_title": "CSRF_TEST"}, csrf=csrf)
        assert response.status == 403
        assert "X-CSRF-Token" in response.json()["error"]
        assert client.delete("/api/sources/KEEPER", csrf=csrf).status == 403
    assert node.config_path.read_bytes() == before


def test_a_viewer_reads_but_cannot_change(web_node):
    node, port = web_node
    viewer = logged_in(port, VIEWER, VIEWER_PASSWORD)
    assert viewer.get("/api/status").status == 200
    assert [s["ae_title"] for s in viewer.get("/api/sources").json()] == ["KEEPER"]
    before = node.config_path.read_bytes()
    response = viewer.post("/api/sources", {"ae_title": "VIEWER_ADD"})
    assert response.status == 403 and "viewer" in response.json()["error"]
    assert viewer.delete("/api/sources/KEEPER").status == 403
    assert viewer.post("/api/destinations", {"name": "x", "ae_title": "X", "host": "127.0.0.1", "port": 104}).status == 403
    assert node.config_path.read_bytes() == before


def test_failed_logins_are_limited_per_client(web_node):
    _, port = web_node
    attacker = WebClient(port, source_address="127.0.0.2")
    statuses = [attacker.login(ADMIN, f"guess-{i}").status for i in range(5)]
    assert statuses == [401] * 5
    blocked = attacker.login(ADMIN, ADMIN_PASSWORD)  # even the right password, for that minute
    assert blocked.status == 429 and int(blocked.headers["retry-after"]) >= 1
    assert WebClient(port).login(ADMIN, ADMIN_PASSWORD).status == 200  # another client is not blocked


def test_set_password_stores_only_a_hash_and_a_running_node_accepts_it(web_node):
    node, port = web_node
    text = node.config_path.read_text()
    node.config_path.write_text("# kept: an admin's comment\n" + text)
    password = "a-new-console-password"
    before = reloads(node)
    out = subprocess.run(
        node.command("web", "set-password", "carol", "--role", "admin"),
        input=password + "\n", capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    written = node.config_path.read_text()
    assert written.startswith("# kept: an admin's comment\n")
    assert password not in written
    assert '[[web_users]]\nname = "carol"\nrole = "admin"\npassword_hash = "$argon2id$' in written
    wait_reloaded(node, before)
    assert WebClient(port).login("carol", password).status == 200

    before = reloads(node)
    changed = subprocess.run(
        node.command("web", "set-password", "carol"), input="another-password-2\n", capture_output=True, text=True, timeout=60
    )
    assert changed.returncode == 0, changed.stderr
    assert node.config_path.read_text().count('name = "carol"') == 1
    wait_reloaded(node, before)
    assert WebClient(port).login("carol", "another-password-2").status == 200
    assert WebClient(port).login("carol", password).status == 401

    short = subprocess.run(node.command("web", "set-password", "dave"), input="short\n", capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "at least 8" in short.stderr
    assert "dave" not in node.config_path.read_text()


def test_logins_are_audited_without_passwords(web_node):
    node, port = web_node
    logged_in(port)
    assert wait_until(lambda: [e for e in node.log_events() if e.get("event") == "web_audit" and e.get("action") == "login"], timeout=5)
    assert ADMIN_PASSWORD not in node.log_text()
