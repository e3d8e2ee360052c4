"""A small HTTP client for the node's web console (standard library only): JSON in and out, the
session cookie kept, the CSRF header sent once logged in, an optional source address (another
loopback address is another client for the failed-login limit).

    client = WebClient(port)
    client.login("admin", "secret-password")        # -> response; keeps cookie and CSRF token
    client.get("/api/status").json()
    client.post("/api/sources", {"ae_title": "CT1"}).status
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from http.cookies import SimpleCookie


@dataclass
class WebResponse:
    status: int
    headers: dict[str, str]
    set_cookies: list[str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class WebClient:
    def __init__(self, port: int, host: str = "127.0.0.1", source_address: str | None = None) -> None:
        self.port, self.host, self.source_address = port, host, source_address
        self.cookies: dict[str, str] = {}
        self.csrf_token: str | None = None

    def request(self, method: str, path: str, body=None, *, raw: bytes | None = None, csrf: str | None = None) -> WebResponse:
        """``csrf``: the header to send (default: the session's token once logged in; "" none)."""
        source = (self.source_address, 0) if self.source_address else None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60, source_address=source)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        token = self.csrf_token if csrf is None else csrf
        if token:
            headers["X-CSRF-Token"] = token
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            set_cookies = response.headers.get_all("Set-Cookie") or []
            result = WebResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, set_cookies, response.read())
        finally:
            conn.close()
        for line in set_cookies:
            for name, morsel in SimpleCookie(line).items():
                if morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return result

    def get(self, path: str, **kw) -> WebResponse:
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw) -> WebResponse:
        return self.request("POST", path, body, **kw)

    def delete(self, path: str, **kw) -> WebResponse:
        return self.request("DELETE", path, **kw)

    def login(self, user: str, password: str) -> WebResponse:
        response = self.post("/api/session", {"user": user, "password": password})
        if response.status == 200:
            self.csrf_token = response.json()["csrf_token"]
        return response
