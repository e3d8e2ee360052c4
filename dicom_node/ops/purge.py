"""``m2unet-node purge [--dry-run] [--json]``: one retention pass now (:mod:`dicom_node.ops.retention`)."""

from __future__ import annotations

import structlog

from dicom_node.state import db
from dicom_node.config.model import RetentionSettings
from dicom_node.ops.retention import RetentionReport, apply_retention

log = structlog.get_logger()


def format_report(report: RetentionReport, settings: RetentionSettings) -> str:
    from dicom_node.ops.status import human_bytes

    verb = "would delete" if report.dry_run else "deleted"
    lines = [
        f"retention ({'dry run: nothing deleted' if report.dry_run else 'pass done'}): received_days "
        f"{settings.received_days:g}, results_days {settings.results_days:g} (0: keep forever)",
        f"{verb}: received instances of {report.series_purged} series ({report.spool_files} files), "
        f"{len(report.result_sets)} result sets and {report.stray_result_folders} unrecorded result folders "
        f"({report.result_files} files), {report.outbox_files} outbox copies, {report.quarantine_files} "
        f"quarantined files; {human_bytes(report.bytes_freed)} freed",
    ]
    for s in report.series:
        lines.append(f"  series {s.series_instance_uid} v{s.version} ({s.state}): {s.files} files, {human_bytes(s.bytes)}")
    for r in report.result_sets:
        lines.append(f"  results {r.series_instance_uid} v{r.version}: {r.files} files, {human_bytes(r.bytes)}")
    if report.held:
        lines.append(f"held (kept while a result of theirs is not delivered): {len(report.held)} series")
        for h in report.held:
            waiting = ", ".join(f"{state} {n}" for state, n in sorted(h.waiting.items()))
            lines.append(f"  series {h.series_instance_uid} v{h.version}: {waiting}")
    if report.held_result_sets:
        lines.append(f"held: {report.held_result_sets} result sets (an object not delivered)")
    if report.errors:
        lines.append(f"could not delete {report.errors} files (kept; tried again at the next pass)")
    return "\n".join(lines)


def run_purge(config_path, dry_run: bool = False, as_json: bool = False) -> int:
    """``m2unet-node purge [--dry-run] [--json]``: one retention pass now, with the config's
    ``[retention]``; safe while the node runs. Exit 0; 1 when files could not be deleted; 2 on a
    bad config."""
    import json
    import sys

    from dicom_node.config.model import ConfigError, load_config
    from dicom_node.ops.logs import configure_logging

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    if not dry_run:  # the series_purged lines are the audit trail: to standard error
        configure_logging(config.node.log_format, stream=sys.stderr)
    conn = db.connect(config.node.data_dir)
    try:
        report = apply_retention(conn, config.node.data_dir, config.retention, dry_run=dry_run)
    finally:
        conn.close()
    if not dry_run:
        log.info("retention_pass", trigger="cli", seconds=round(report.seconds, 3), **report.counts())
    print(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report, config.retention))
    return 1 if report.errors else 0
