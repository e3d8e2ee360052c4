"""What every request of the console reaches: the live config, the database, sessions, the audit log."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import structlog
from fastapi import Request

from dicom_node.config.model import NodeConfig
from dicom_node.web.auth import COOKIE_NAME, LoginLimiter, Session, SessionStore

audit_log = structlog.get_logger("dicom_node.web.audit")


@dataclass
class WebContext:
    live_config: object  # dicom_node.config.live.LiveConfig (``.current``, ``.path``)
    conn: object  # dicom_node.state.db.NodeConnection
    sessions: SessionStore
    limiter: LoginLimiter = field(default_factory=LoginLimiter)

    @property
    def config(self) -> NodeConfig:
        return self.live_config.current

    @property
    def config_path(self) -> Path:
        return Path(self.live_config.path)

    def role_of(self, user: str) -> str | None:
        return next((u.role for u in self.config.web_users if u.name == user), None)

    def session_of(self, request: Request) -> Session | None:
        """The request's live session; ended when its user left the config or changed role."""
        token = request.cookies.get(COOKIE_NAME)
        session = self.sessions.get(token)
        if session is not None and self.role_of(session.user) != session.role:
            self.sessions.end(token)
            return None
        return session

    def audit(self, session: Session | None, action: str, target: str, outcome: str, request: Request, **extra) -> None:
        """One line per change made through the console: who, what, when (the line's timestamp),
        from where, and how it ended. AE titles, names and UIDs only: never patient data."""
        audit_log.info(
            "web_audit",
            user=session.user if session else None,
            role=session.role if session else None,
            action=action,
            target=target,
            outcome=outcome,
            client=client_of(request),
            **extra,
        )


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def context_of(request: Request) -> WebContext:
    return request.app.state.web
