"""The console's pages: login, dashboard, sources and destinations, one series.

Rendered on the server with Jinja2 from the same functions the API uses; the forms and buttons
call the API with ``static/console.js`` (no build step, nothing from the internet). A page asked
for without a session redirects to the login page. Times are shown in the site's local time.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from dicom_node.config.model import ConfigError, load_config
from dicom_node.web.api import NO_USERS, node_status
from dicom_node.web.context import context_of
from dicom_node.web.series import series_detail

router = APIRouter()
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def local_time(iso: str | None) -> str:
    """An ISO 8601 UTC time as the site's local time (``2026-12-03 11:20:05 CET``)."""
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


templates.env.filters["localtime"] = local_time


def _login_first(request: Request) -> RedirectResponse | None:
    if context_of(request).session_of(request) is None:
        return RedirectResponse("/login", status_code=303)
    return None


def _page(request: Request, name: str, **values) -> HTMLResponse:
    ctx = context_of(request)
    session = ctx.session_of(request)
    return templates.TemplateResponse(request, name, {"session": session, "node": ctx.config.node, **values})


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request) -> HTMLResponse:
    ctx = context_of(request)
    note = None if ctx.config.web_users else NO_USERS
    return templates.TemplateResponse(request, "login.html", {"session": None, "note": note, "node": ctx.config.node})


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard(request: Request) -> HTMLResponse:
    if redirect := _login_first(request):
        return redirect
    status = node_status(context_of(request))
    series = status["series"]
    deliveries = status["deliveries"]
    return _page(
        request,
        "dashboard.html",
        status=status,
        running=[s for s in series if s["state"] == "running"],
        failed=[s for s in series if s["state"] == "failed"],
        recent=sorted(series, key=lambda s: s["last_received"] or "", reverse=True)[:50],
        pending=[i for i in deliveries.get("items", []) or [] if i.get("state") == "pending"],
    )


@router.get("/config", response_class=HTMLResponse, include_in_schema=False)
def config_page(request: Request) -> HTMLResponse:
    if redirect := _login_first(request):
        return redirect
    ctx = context_of(request)
    try:
        config, problem = load_config(ctx.config_path), None
    except ConfigError as exc:
        config, problem = ctx.config, "; ".join(exc.problems)
    return _page(request, "config.html", sources=config.sources, destinations=config.destinations, problem=problem)


@router.get("/series/{uid}", response_class=HTMLResponse, include_in_schema=False)
def series_page(uid: str, request: Request) -> HTMLResponse:
    if redirect := _login_first(request):
        return redirect
    ctx = context_of(request)
    detail = series_detail(ctx.conn, uid, show_patient_names=ctx.config.web.show_patient_names)
    if detail is None:
        return _page(request, "missing.html", uid=uid)
    return _page(request, "series.html", uid=uid, detail=detail)
