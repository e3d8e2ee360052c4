"""The REST API under ``/api``: session, status, sources, destinations, series.

Every call but ``POST /api/session`` needs a session (401 without); every change (POST, DELETE)
also needs the session's CSRF token in ``X-CSRF-Token`` (403 without) and the admin role (403 for
a viewer). Errors are ``{"error": "...", "problems": [{"key", "value", "reason"}]}``; a refused
edit leaves the config file as it was. Edits go through :mod:`dicom_node.config.edit` (validated,
locked, atomic, comments kept); the running node picks them up by its hot reload.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from dicom_node.config.admin import c_echo
from dicom_node.config.edit import EditError, add_destination, add_source, remove_destination, remove_source
from dicom_node.config.model import ConfigError, load_config
from dicom_node.config.validation import MISSING
from dicom_node.ops.retry import EXIT_OK, retry_series
from dicom_node.ops.status import collect_status
from dicom_node.state import db
from dicom_node.web.auth import COOKIE_NAME, CSRF_HEADER, Session, verify_password
from dicom_node.web.context import client_of, context_of
from dicom_node.web.series import series_detail, summary_path, summary_png

router = APIRouter(prefix="/api")

# the CLI's argument names in the edit's problems -> the JSON body's keys
_BODY_KEYS = {"AE_TITLE": "ae_title", "--host": "host", "NAME": "name", "HOST": "host", "PORT": "port"}


class ApiError(Exception):
    def __init__(self, status: int, error: str, problems: list[dict] | None = None, headers: dict | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.problems, self.headers = status, error, problems or [], headers


def api_error_response(request: Request, exc: ApiError) -> JSONResponse:
    body: dict[str, Any] = {"error": exc.error}
    if exc.problems:
        body["problems"] = exc.problems
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def _problem(key: str, value: Any, reason: str) -> dict:
    return {"key": _BODY_KEYS.get(key, key), "value": value, "reason": reason}


def _refused(exc: EditError | ConfigError) -> ApiError:
    if isinstance(exc, EditError):
        problems = [_problem(p.key, None if p.value is MISSING else p.value, p.reason) for p in exc.problems]
    else:
        problems = [{"key": "config", "value": None, "reason": line} for line in exc.problems]
    return ApiError(400, "refused: the config file is unchanged", problems)


async def _json_object(request: Request, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the body must be JSON", [_problem("(body)", None, "is not valid JSON")]) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", [_problem("(body)", None, "must be a JSON object")])
    problems = [_problem(k, None, "required") for k in required if body.get(k) is None]
    problems += [_problem(k, body[k], f"unknown key; known: {', '.join(required + optional)}")
                 for k in body if k not in required + optional]
    if problems:
        raise ApiError(400, "refused: the config file is unchanged", problems)
    return body


# --- who may call -------------------------------------------------------------------------------


def require_session(request: Request) -> Session:
    session = context_of(request).session_of(request)
    if session is None:
        raise ApiError(401, "not logged in (POST /api/session)")
    return session


def require_change(request: Request, session: Session = Depends(require_session)) -> Session:
    """A change: the session's CSRF token in the header, and the admin role."""
    if not secrets.compare_digest(request.headers.get(CSRF_HEADER, ""), session.csrf_token):
        raise ApiError(403, f"missing or wrong {CSRF_HEADER} header")
    if session.role != "admin":
        raise ApiError(403, f"user {session.user} is a viewer: changes need the admin role")
    return session


# --- session ------------------------------------------------------------------------------------

NO_USERS = (
    "no console users are configured: set one with "
    "`m2unet-node web set-password USER --role admin` (reads the password from standard input)"
)


@router.post("/session")
async def log_in(request: Request) -> JSONResponse:
    """Log in with ``{"user", "password"}``: a session cookie and the CSRF token for changes."""
    ctx = context_of(request)
    client = client_of(request)
    wait = ctx.limiter.blocked_for(client)
    if wait:
        raise ApiError(429, f"too many failed logins: try again in {wait:.0f} s", headers={"Retry-After": str(int(wait) + 1)})
    body = await _json_object(request, ("user", "password"))
    user, password = body["user"], body["password"]
    if not isinstance(user, str) or not isinstance(password, str):
        raise ApiError(400, "user and password must be strings")
    if not ctx.config.web_users:
        raise ApiError(401, NO_USERS)
    entry = next((u for u in ctx.config.web_users if u.name == user), None)
    ok = await run_in_threadpool(verify_password, entry.password_hash if entry else None, password)
    if not ok:
        ctx.limiter.failed(client)
        ctx.audit(None, "login", user, "refused", request)
        raise ApiError(401, "wrong user or password")
    ctx.limiter.succeeded(client)
    token, session = ctx.sessions.create(entry.name, entry.role)
    ctx.audit(session, "login", user, "done", request)
    response = JSONResponse({"user": session.user, "role": session.role, "csrf_token": session.csrf_token})
    response.set_cookie(
        COOKIE_NAME,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.delete("/session")
def log_out(request: Request, session: Session = Depends(require_session)) -> JSONResponse:
    if not secrets.compare_digest(request.headers.get(CSRF_HEADER, ""), session.csrf_token):
        raise ApiError(403, f"missing or wrong {CSRF_HEADER} header")
    context_of(request).sessions.end(request.cookies.get(COOKIE_NAME))
    context_of(request).audit(session, "logout", session.user, "done", request)
    response = JSONResponse({"logged_out": session.user})
    response.delete_cookie(COOKIE_NAME, path="/")
    return response


# --- status -------------------------------------------------------------------------------------


def node_status(ctx) -> dict:
    config = ctx.config
    return collect_status(ctx.conn, [d.name for d in config.destinations], config.retention)


@router.get("/status")
def status(request: Request, session: Session = Depends(require_session)) -> dict:
    """What ``m2unet-node status --json`` prints."""
    return node_status(context_of(request))


# --- sources ------------------------------------------------------------------------------------


def _file_config(ctx):
    """The config as the file says now (an edit a moment ago may not be hot-reloaded yet)."""
    try:
        return load_config(ctx.config_path)
    except ConfigError as exc:
        raise _refused(exc) from exc


@router.get("/sources")
def list_sources(request: Request, session: Session = Depends(require_session)) -> list[dict]:
    return [
        {"ae_title": s.ae_title, "host": s.host, "series_timeout": s.series_timeout}
        for s in _file_config(context_of(request)).sources
    ]


@router.post("/sources", status_code=201)
async def create_source(request: Request, session: Session = Depends(require_change)) -> dict:
    """Allow ``{"ae_title", "host"}`` (host optional: any address) to send."""
    ctx = context_of(request)
    body = await _json_object(request, ("ae_title",), ("host",))
    host = body.get("host") or None
    try:
        await run_in_threadpool(add_source, ctx.config_path, body["ae_title"], host=host)
    except (EditError, ConfigError) as exc:
        ctx.audit(session, "source_add", str(body["ae_title"]), "refused", request)
        raise _refused(exc) from exc
    ctx.audit(session, "source_add", body["ae_title"], "done", request, host=host)
    return {"ae_title": body["ae_title"], "host": host}


@router.delete("/sources/{ae_title}")
def delete_source(ae_title: str, request: Request, session: Session = Depends(require_change)) -> dict:
    ctx = context_of(request)
    if not any(s.ae_title.strip(" ") == ae_title.strip(" ") for s in _file_config(ctx).sources):
        raise ApiError(404, f"no source {ae_title} in [[sources]]")
    try:
        result = remove_source(ctx.config_path, ae_title)
    except (EditError, ConfigError) as exc:
        ctx.audit(session, "source_remove", ae_title, "refused", request)
        raise _refused(exc) from exc
    ctx.audit(session, "source_remove", ae_title, "done", request, entries=result.changed)
    return {"removed": ae_title, "entries": result.changed}


# --- destinations -------------------------------------------------------------------------------


def _destination_dict(d) -> dict:
    return {"name": d.name, "ae_title": d.ae_title, "host": d.host, "port": d.port, "tls": d.tls}


@router.get("/destinations")
def list_destinations(request: Request, session: Session = Depends(require_session)) -> list[dict]:
    return [_destination_dict(d) for d in _file_config(context_of(request)).destinations]


@router.post("/destinations", status_code=201)
async def create_destination(request: Request, session: Session = Depends(require_change)) -> dict:
    """Add ``{"name", "ae_title", "host", "port"}`` (plain TCP; TLS destinations: the CLI)."""
    ctx = context_of(request)
    body = await _json_object(request, ("name", "ae_title", "host", "port"))
    port = body["port"]
    if isinstance(port, bool) or not isinstance(port, (int, str)):
        raise ApiError(400, "refused: the config file is unchanged", [_problem("port", port, "must be an integer between 1 and 65535")])
    try:
        result = await run_in_threadpool(add_destination, ctx.config_path, body["name"], body["ae_title"], body["host"], port)
    except (EditError, ConfigError) as exc:
        ctx.audit(session, "destination_add", str(body["name"]), "refused", request)
        raise _refused(exc) from exc
    dest = next(d for d in result.config.destinations if d.name == body["name"])
    ctx.audit(session, "destination_add", dest.name, "done", request, ae_title=dest.ae_title, host=dest.host, port=dest.port)
    return _destination_dict(dest)


@router.delete("/destinations/{name}")
def delete_destination(name: str, request: Request, session: Session = Depends(require_change)) -> dict:
    ctx = context_of(request)
    if not any(d.name == name for d in _file_config(ctx).destinations):
        raise ApiError(404, f"no destination {name} in [[destinations]]")
    try:
        remove_destination(ctx.config_path, name)
    except (EditError, ConfigError) as exc:
        ctx.audit(session, "destination_remove", name, "refused", request)
        raise _refused(exc) from exc
    ctx.audit(session, "destination_remove", name, "done", request)
    return {"removed": name}


@router.post("/destinations/{name}/echo")
def echo_destination(name: str, request: Request, session: Session = Depends(require_change)) -> JSONResponse:
    """A real C-ECHO from the node's AE title: 200 on success, 502 with the reason otherwise."""
    ctx = context_of(request)
    config = _file_config(ctx)
    dest = next((d for d in config.destinations if d.name == name), None)
    if dest is None:
        raise ApiError(404, f"no destination {name} in [[destinations]]")
    outcome = c_echo(config, dest.ae_title, dest.host, dest.port, destination=dest)
    ctx.audit(session, "destination_echo", name, "success" if outcome.ok else "failed", request)
    body = {"name": name, "ok": outcome.ok, "reason": outcome.reason, "milliseconds": round(outcome.seconds * 1000)}
    return JSONResponse(body, status_code=200 if outcome.ok else 502)


# --- series -------------------------------------------------------------------------------------


@router.get("/series/{uid}")
def get_series(uid: str, request: Request, session: Session = Depends(require_session)) -> dict:
    """The series' state, its findings (severity, lobes) and quality check."""
    ctx = context_of(request)
    detail = series_detail(ctx.conn, uid, show_patient_names=ctx.config.web.show_patient_names)
    if detail is None:
        raise ApiError(404, f"no series {uid}")
    return detail


@router.get("/series/{uid}/summary.png", response_class=Response)
def get_summary_image(uid: str, request: Request, session: Session = Depends(require_session)) -> Response:
    """The summary Secondary Capture of the series' newest result, as PNG."""
    path = summary_path(context_of(request).conn, uid)
    if path is None:
        raise ApiError(404, f"no summary image for series {uid}")
    return Response(summary_png(path), media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/series/{uid}/retry")
def retry(uid: str, request: Request, session: Session = Depends(require_change)) -> dict:
    """As ``m2unet-node retry``: 200 re-queued, 404 unknown, 409 nothing failed or nothing left to retry."""
    ctx = context_of(request)
    if db.get_series(ctx.conn, uid) is None:
        raise ApiError(404, f"no series {uid}")
    outcome = retry_series(ctx.conn, uid)
    ctx.audit(session, "series_retry", uid, "done" if outcome.exit_code == EXIT_OK else "refused", request)
    if outcome.exit_code != EXIT_OK:
        raise ApiError(409, "; ".join(outcome.lines))
    return {"retried": uid, "lines": outcome.lines}
