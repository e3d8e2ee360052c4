"""Sources and destinations through the REST API of a running node: the edits reach the file and
the node (a real DCMTK echoscu let in or refused, a real C-ECHO to Orthanc), bad input is refused
with the key and why, and the file is then byte-identical."""

from __future__ import annotations

import pytest

from tests.dicom_node.web.conftest import logged_in, reloads, wait_reloaded
from tests.support.dcmtk import echoscu, have_dcmtk
from tests.support.node_process import free_port
from tests.support.orthanc import OrthancServer, orthanc_available


def audit_events(node) -> list[dict]:
    return [e for e in node.log_events() if e.get("event") == "web_audit"]


def let_in(node, calling_ae: str) -> bool:
    return echoscu(node.port, calling_ae=calling_ae, called_ae=node.ae_title).returncode == 0


@pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK")
def test_add_edit_remove_a_source_lets_a_scanner_in_then_refuses_it(web_node):
    node, port = web_node
    client = logged_in(port)
    assert not let_in(node, "WEB_CT")

    before = reloads(node)
    response = client.post("/api/sources", {"ae_title": "WEB_CT", "host": "127.0.0.1"})
    assert response.status == 201, response.body
    assert '[[sources]]\nae_title = "WEB_CT"\nhost = "127.0.0.1"' in node.config_path.read_text()
    wait_reloaded(node, before)
    assert let_in(node, "WEB_CT")
    assert {"ae_title": "WEB_CT", "host": "127.0.0.1", "series_timeout": None} in client.get("/api/sources").json()

    # edit: the same scanner, now only from another address
    before = reloads(node)
    assert client.delete("/api/sources/WEB_CT").status == 200
    assert client.post("/api/sources", {"ae_title": "WEB_CT", "host": "10.99.0.1"}).status == 201
    wait_reloaded(node, before)
    assert not let_in(node, "WEB_CT")

    before = reloads(node)
    assert client.delete("/api/sources/WEB_CT").status == 200
    wait_reloaded(node, before)
    assert "WEB_CT" not in node.config_path.read_text()
    assert not let_in(node, "WEB_CT")
    assert client.delete("/api/sources/WEB_CT").status == 404

    changes = [(e["user"], e["action"], e["target"], e["outcome"]) for e in audit_events(node) if e["target"] == "WEB_CT"]
    assert changes == [
        ("admin", "source_add", "WEB_CT", "done"),
        ("admin", "source_remove", "WEB_CT", "done"),
        ("admin", "source_add", "WEB_CT", "done"),
        ("admin", "source_remove", "WEB_CT", "done"),
    ]
    assert all(e.get("timestamp") for e in audit_events(node))


@pytest.mark.parametrize(
    "path, body, key, why",
    [
        ("/api/sources", {"ae_title": "SEVENTEEN_CHARS_X"}, "ae_title", "16"),
        ("/api/sources", {"ae_title": "OK_TITLE", "host": "not a host!"}, "host", "host name"),
        ("/api/sources", {"host": "127.0.0.1"}, "ae_title", "required"),
        ("/api/sources", {"ae_title": "KEEPER"}, "sources[0].ae_title", "already allowed"),
        ("/api/sources", {"ae_title": "OK_TITLE", "colour": "red"}, "colour", "unknown key"),
        ("/api/destinations", {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 70000}, "port", "65535"),
        ("/api/destinations", {"name": "bad name", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}, "name", "letters"),
        ("/api/destinations", {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": True}, "port", "integer"),
        ("/api/destinations", {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1"}, "port", "required"),
        ("/api/destinations", ["not", "an", "object"], "(body)", "JSON object"),
    ],
)
def test_bad_input_is_refused_with_the_key_and_the_file_is_unchanged(web_node, path, body, key, why):
    node, port = web_node
    client = logged_in(port)
    before = node.config_path.read_bytes()
    response = client.post(path, body)
    assert response.status == 400, response.body
    problems = response.json()["problems"]
    assert any(p["key"] == key and why in p["reason"] for p in problems), problems
    assert node.config_path.read_bytes() == before


def test_removing_the_last_source_is_refused(web_node):
    node, port = web_node
    client = logged_in(port)
    before = node.config_path.read_bytes()
    response = client.delete("/api/sources/KEEPER")
    assert response.status == 400
    assert response.json()["problems"][0]["key"] == "sources"
    assert node.config_path.read_bytes() == before


def test_invalid_json_is_a_400(web_node):
    node, port = web_node
    client = logged_in(port)
    response = client.request("POST", "/api/sources", raw=b"{not json")
    assert response.status == 400 and response.json()["problems"][0]["key"] == "(body)"


@pytest.mark.skipif(not orthanc_available(), reason="needs Orthanc")
def test_a_destination_added_through_the_api_answers_a_real_c_echo(web_node, tmp_path):
    node, port = web_node
    client = logged_in(port)
    with OrthancServer(tmp_path / "orthanc") as pacs:
        body = {"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}
        response = client.post("/api/destinations", body)
        assert response.status == 201, response.body
        assert response.json() == {**body, "tls": False}
        assert body | {"tls": False} in client.get("/api/destinations").json()

        echo = client.post("/api/destinations/pacs/echo")
        assert echo.status == 200, echo.body
        assert echo.json()["ok"] is True and echo.json()["reason"] == "success"

    closed = free_port()
    assert client.post("/api/destinations", {"name": "nowhere", "ae_title": "NONE", "host": "127.0.0.1", "port": closed}).status == 201
    failed = client.post("/api/destinations/nowhere/echo")
    assert failed.status == 502
    assert failed.json()["ok"] is False and "cannot connect" in failed.json()["reason"]
    assert client.post("/api/destinations/unknown/echo").status == 404

    for name in ("pacs", "nowhere"):
        assert client.delete(f"/api/destinations/{name}").status == 200
    assert client.get("/api/destinations").json() == []
    assert client.delete("/api/destinations/pacs").status == 404
    actions = [(e["action"], e["target"], e["outcome"]) for e in audit_events(node) if e["action"].startswith("destination")]
    assert ("destination_echo", "pacs", "success") in actions
    assert ("destination_echo", "nowhere", "failed") in actions


def test_status_is_what_the_cli_prints(web_node):
    node, port = web_node
    api = logged_in(port).get("/api/status").json()
    cli = node.status_json()
    assert api["counts"] == cli["counts"]
    assert api["series"] == cli["series"]
    assert set(api) == set(cli)
    assert api["data_dir"] == cli["data_dir"]


def test_openapi_is_served_and_no_page_loads_from_a_cdn(web_node):
    _, port = web_node
    client = logged_in(port)
    spec = client.get("/openapi.json").json()
    for path in ("/api/session", "/api/status", "/api/sources", "/api/destinations/{name}/echo", "/api/series/{uid}/summary.png"):
        assert path in spec["paths"], path
    assert client.get("/docs").status == 404
    for page in ("/", "/config", "/login"):
        html = client.get(page).body.decode()
        assert "http://" not in html and "https://" not in html, page
    assert client.get("/static/console.js").status == 200
