"""The FastAPI application of the console: the API, the pages and the package's static files.

``/openapi.json`` describes the API; the interactive /docs and /redoc pages are off, since they
load their scripts from a CDN and the console loads nothing from the internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from dicom_node.web import api, pages
from dicom_node.web.auth import SessionStore
from dicom_node.web.context import WebContext

STATIC = Path(__file__).parent / "static"


def create_app(live_config, conn) -> FastAPI:
    """The application over ``live_config`` (a :class:`~dicom_node.config.live.LiveConfig`) and
    a database connection of the node's ``data_dir``."""
    app = FastAPI(
        title="m2unet-node",
        summary="Status, sources, destinations and results of an m2unet-node DICOM node.",
        docs_url=None,
        redoc_url=None,
    )
    minutes = live_config.current.web.session_minutes
    app.state.web = WebContext(live_config, conn, SessionStore(lifetime=minutes * 60.0))
    app.add_exception_handler(api.ApiError, api.api_error_response)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
