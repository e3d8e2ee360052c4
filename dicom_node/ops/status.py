"""``m2unet-node status [--json]``: series received, queued, running, done, failed; pending deliveries;
disk use and retention.

JSON: ``{"data_dir", "counts": {state: n}, "series": [...], "deliveries": {...}, "disk": {...},
"retention": {...}}`` where each series has ``study_instance_uid``, ``series_instance_uid``,
``calling_ae``, ``instances``, ``state``, ``reason``, ``version``, ``first_received``,
``last_received`` (UTC, ISO 8601), ``qc`` (for a ``done`` series, the quality check of its
result: ``{"passed": bool, "failed": [check names]}``; null otherwise), ``retry_at`` (UTC; for a
``queued`` series waiting out a transient resource error such as a full disk, when its job is
tried again; its ``reason`` says "waiting: disk full ..."; null otherwise) and ``purged_at`` (UTC;
null unless retention deleted the received instances of version ``purged_version``, ``purged_instances`` of them; ``purged`` is true
when that is the current version, and a ``purged_version`` below ``version`` means the series was
re-opened by later instances and holds only those); ``disk`` is ``used_bytes`` under data_dir with
``spool_bytes``, ``results_bytes``, ``outbox_bytes``, ``quarantine_bytes``, ``database_bytes``,
``other_bytes``, and the file system's ``free_bytes`` and ``total_bytes``; ``retention`` is the
``[retention]`` settings (``received_days``, ``results_days``: 0 keeps forever;
``check_interval`` seconds), ``purged_series`` (series whose current version's instances were
deleted), ``purged_result_sets`` and ``last_pass`` (the node's last pass: ``finished_at`` and its
counts; null before the first). ``deliveries`` is the
outbox's ``delivery_summary`` (:mod:`dicom_node.delivery.outbox`: pending, failed, delivered,
orphaned and the items not yet delivered; ``{"error"}`` when the database cannot be read), plus
``not_configured``: ``{destination: objects}``
for items waiting (pending or orphaned) for a destination that is not in the config read by
``status`` (orphaned: the sender saw it removed; pending: the sender has not run since). Only UIDs,
AE titles and counts: never patient data.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from datetime import datetime, timezone

from dicom_node.state import db
from dicom_node.config.model import ConfigError, RetentionSettings, load_config
from dicom_node.delivery.outbox import PENDING, WAITING, delivery_summary
from dicom_node.ops.disk_use import disk_use
from dicom_node.state import tasks as task_table
from dicom_node.state.retention import last_pass
from dicom_node.state.results import purged_result_sets, qc_verdicts


def _iso(ts: float) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds") if ts else None


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _days(days: float) -> str:
    return "forever" if days <= 0 else f"{days:g} day{'s' if days != 1 else ''}"


def _deliveries(conn: sqlite3.Connection, configured: list[str] | None, purged: set[tuple[str, int]]) -> dict:
    try:
        summary = delivery_summary(conn)
    except sqlite3.Error as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if purged and summary.get("kept"):  # result sets retention removed are no longer on disk
        summary["kept"] = [k for k in summary["kept"] if (k.get("series_instance_uid"), k.get("version")) not in purged]
    if configured is not None:
        names = set(configured)
        waiting: dict[str, int] = {}
        for item in summary.get("items", []):
            if item.get("state") in WAITING and item.get("destination") not in names:
                waiting[item["destination"]] = waiting.get(item["destination"], 0) + 1
        summary["not_configured"] = waiting
    return summary


def _retention(conn: sqlite3.Connection, settings: RetentionSettings | None, purged: set[tuple[str, int]]) -> dict:
    out: dict = {}
    if settings is not None:
        out.update(
            received_days=settings.received_days,
            results_days=settings.results_days,
            check_interval=settings.check_interval,
        )
    out["purged_series"] = db.purged_series_count(conn)
    out["purged_result_sets"] = len(purged)
    last = last_pass(conn)
    if last is not None:
        last["finished_at"] = _iso(last["finished_at"])
    out["last_pass"] = last
    return out


def _qc_note(s: dict) -> str | None:
    qc = s.get("qc")
    if not qc or qc.get("passed") is None:
        return None
    if qc["passed"]:
        return "quality check: passed"
    return "quality check: FAILED (" + ", ".join(qc.get("failed") or []) + ")"


def collect_status(
    conn: sqlite3.Connection, configured: list[str] | None = None, retention: RetentionSettings | None = None
) -> dict:
    """The status document; ``configured``: the destination names of the config (None: unknown);
    ``retention``: the config's ``[retention]`` (None: unknown, only the database's counts)."""
    verdicts = qc_verdicts(conn)  # the quality check of each recorded result set (check names only)
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
            "purged": s.purged,
            "purged_at": _iso(s.purged_at) if s.purged_at else None,
            "purged_version": s.purged_version,
            "purged_instances": s.purged_instances,
            "qc": verdicts.get((s.series_instance_uid, s.version)) if s.state == db.SeriesState.DONE else None,
            "retry_at": _iso(s.retry_at) if s.state == db.SeriesState.QUEUED and s.retry_at else None,
        }
        for s in db.list_series(conn)
    ]
    data_dir = conn.data_dir
    purged = purged_result_sets(conn)  # result sets retention removed: not kept any more
    out = {
        "data_dir": str(data_dir),
        "counts": db.state_counts(conn),
        "series": series,
        "deliveries": _deliveries(conn, configured, purged),
        "disk": disk_use(data_dir),
        "retention": _retention(conn, retention, purged),
    }
    workers = task_table.workers(conn)
    counts = task_table.task_counts(conn)
    if workers or any(counts.values()):  # the Celery executor ran: its workers and tasks
        out["workers"] = [
            {**w, "started_at": _iso(w["started_at"]), "last_seen": _iso(w["last_seen"]),
             "seconds_since_seen": round(max(0.0, time.time() - w["last_seen"]), 1)}
            for w in workers
        ]
        out["tasks"] = counts
    return out


def _worker_lines(status: dict) -> list[str]:
    if "workers" not in status:
        return []
    t = status["tasks"]
    lines = [f"tasks: {t['queued']} queued, {t['running']} running, {t['retried']} retried, {t['finished']} finished"]
    for w in status["workers"]:
        doing = f", running {w['current_series']}" if w.get("current_series") else ""
        lines.append(
            f"worker {w['name']} ({w['device']}): last seen {w['seconds_since_seen']:g} s ago, "
            f"{w['tasks_done']} tasks done{doing}"
        )
    return lines


def _disk_line(disk: dict) -> str:
    parts = ", ".join(
        f"{area} {human_bytes(disk.get(f'{area}_bytes'))}" for area in ("spool", "results", "outbox", "quarantine", "database")
    )
    line = f"disk: data_dir uses {human_bytes(disk.get('used_bytes'))} ({parts})"
    if disk.get("free_bytes") is not None:
        line += f"; {human_bytes(disk['free_bytes'])} free of {human_bytes(disk.get('total_bytes'))}"
    return line


def _retention_lines(r: dict) -> list[str]:
    lines = []
    if "received_days" in r:
        interval = r["check_interval"]
        every = f"{interval / 3600:g} h" if interval >= 3600 else f"{interval / 60:g} min"
        lines.append(
            f"retention: received instances kept {_days(r['received_days'])} after their series is final and "
            f"delivered; results kept {_days(r['results_days'])}; checked every {every}"
        )
    line = f"retention: {r.get('purged_series', 0)} series purged (received instances deleted)"
    if r.get("purged_result_sets"):
        line += f", {r['purged_result_sets']} result sets removed"
    last = r.get("last_pass")
    if last:
        line += (
            f"; last pass {last['finished_at']}: {last['series_purged']} series, {last['files_deleted']} files, "
            f"{human_bytes(last['bytes_freed'])} freed"
        )
        if last.get("held_series"):
            line += f", {last['held_series']} series held (results not delivered)"
    lines.append(line)
    return lines


def _purge_note(s: dict) -> str | None:
    if not s.get("purged_at"):
        return None
    if s.get("purged"):
        return f"purged: {s.get('purged_instances') or 0} received instances deleted {s['purged_at']} (retention)"
    return (
        f"re-opened after purge: the instances of v{s.get('purged_version')} were deleted {s['purged_at']}; "
        f"v{s['version']} holds only instances received since (re-send the whole series to process it again)"
    )


def format_status(status: dict) -> str:
    counts = status["counts"]
    lines = [f"data_dir: {status['data_dir']}"]
    if status.get("disk"):
        lines.append(_disk_line(status["disk"]))
    if status.get("retention"):
        lines += _retention_lines(status["retention"])
    lines += _worker_lines(status)
    lines.append("series: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if status["series"]:
        lines.append("")
        lines.append(f"{'state':<10} {'instances':>9}  {'calling AE':<16} series / reason")
        for s in status["series"]:
            lines.append(f"{s['state']:<10} {s['instances']:>9}  {s['calling_ae']:<16} {s['series_instance_uid']}")
            if s["reason"]:
                lines.append(f"{'':<38} reason: {s['reason']}")
            qc_note = _qc_note(s)
            if qc_note:
                lines.append(f"{'':<38} {qc_note}")
            note = _purge_note(s)
            if note:
                lines.append(f"{'':<38} {note}")
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
        status = collect_status(conn, [d.name for d in config.destinations], config.retention)
    finally:
        conn.close()
    print(json.dumps(status, indent=2) if as_json else format_status(status))
    return 0
