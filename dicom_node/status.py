"""``m2unet-node status [--json]``: series received, queued, running, done, failed; pending deliveries.

JSON: ``{"data_dir", "counts": {state: n}, "series": [...], "deliveries": {...}}`` where each series
has ``study_instance_uid``, ``series_instance_uid``, ``calling_ae``, ``instances``, ``state``,
``reason``, ``version``, ``first_received``, ``last_received`` (UTC, ISO 8601); ``deliveries`` is the
results' ``delivery_summary`` (pending, failed, delivered, orphaned and the items not yet
delivered) when the results part is installed, plus ``not_configured``: ``{destination: objects}``
for items waiting (pending or orphaned) for a destination that is not in the config read by
``status`` (orphaned: the sender saw it removed; pending: the sender has not run since). Only UIDs,
AE titles and counts: never patient data.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import datetime, timezone

from dicom_node import db
from dicom_node.config import ConfigError, load_config
from dicom_node.outbox import PENDING, WAITING, delivery_summary


def _iso(ts: float) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds") if ts else None


def _deliveries(conn: sqlite3.Connection, configured: list[str] | None) -> dict:
    try:
        summary = delivery_summary(conn)
    except sqlite3.Error as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if configured is not None:
        names = set(configured)
        waiting: dict[str, int] = {}
        for item in summary.get("items", []):
            if item.get("state") in WAITING and item.get("destination") not in names:
                waiting[item["destination"]] = waiting.get(item["destination"], 0) + 1
        summary["not_configured"] = waiting
    return summary


def collect_status(conn: sqlite3.Connection, configured: list[str] | None = None) -> dict:
    """The status document; ``configured``: the destination names of the config (None: unknown)."""
    series = [
        {
            "study_instance_uid": s.study_instance_uid,
            "series_instance_uid": s.series_instance_uid,
            "calling_ae": s.calling_ae,
            "instances": s.instances,
            "state": s.state,
            "reason": s.reason,
            "version": s.version,
            "first_received": _iso(s.first_received),
            "last_received": _iso(s.last_received),
        }
        for s in db.list_series(conn)
    ]
    return {
        "data_dir": str(db.data_dir_of(conn)),
        "counts": db.state_counts(conn),
        "series": series,
        "deliveries": _deliveries(conn, configured),
    }


def format_status(status: dict) -> str:
    counts = status["counts"]
    lines = [
        f"data_dir: {status['data_dir']}",
        "series: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
    ]
    if status["series"]:
        lines.append("")
        lines.append(f"{'state':<10} {'instances':>9}  {'calling AE':<16} series / reason")
        for s in status["series"]:
            lines.append(f"{s['state']:<10} {s['instances']:>9}  {s['calling_ae']:<16} {s['series_instance_uid']}")
            if s["reason"]:
                lines.append(f"{'':<38} reason: {s['reason']}")
    d = status["deliveries"]
    if d:
        lines.append("")
        if "error" in d:
            lines.append(f"deliveries: unavailable ({d['error']})")
        else:
            line = f"deliveries: pending {d.get('pending', 0)}, failed {d.get('failed', 0)}, delivered {d.get('delivered', 0)}"
            if d.get("orphaned"):
                line += f", orphaned {d['orphaned']} (destination removed from the config)"
            lines.append(line)
            not_configured = d.get("not_configured") or {}
            for item in d.get("items", []) or []:
                err = f" ({item.get('last_error')})" if item.get("last_error") else ""
                state = item.get("state", "pending")
                if state == PENDING and item.get("destination") in not_configured:
                    err += " (destination not in the config: orphaned when the node's sender runs)"
                lines.append(
                    f"  {state:<8} {item.get('destination', '?')}: "
                    f"{item.get('sop_instance_uid', '?')} attempts {item.get('attempts', 0)}{err}"
                )
            if not_configured:
                names = ", ".join(f"{name} ({count})" for name, count in sorted(not_configured.items()))
                lines.append(
                    f"waiting for destinations no longer in the config: {names}; their files are kept, and they are "
                    "sent if a destination of that name is configured again (m2unet-node dest add)"
                )
            kept = d.get("kept") or []
            if kept:
                lines.append(f"results kept on disk (no destination configured): {len(kept)} series")
                for k in kept:
                    lines.append(f"  {k.get('series_instance_uid', '?')} v{k.get('version', 1)}: {k.get('folder', '?')}")
    return "\n".join(lines)


def print_status(config_path, as_json: bool = False) -> int:
    """Print the node's state; exit code 0, or 2 when the config cannot be read."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    conn = db.connect(config.node.data_dir)
    try:
        status = collect_status(conn, [d.name for d in config.destinations])
    finally:
        conn.close()
    print(json.dumps(status, indent=2) if as_json else format_status(status))
    return 0
