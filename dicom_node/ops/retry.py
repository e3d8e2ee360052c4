"""``m2unet-node retry SERIES_UID``: try a failed series again, safe while the node runs.

What is retried:

- its job, when the series is ``failed`` (the model or a builder failed, the series could not be
  reconstructed): the series goes back to ``queued`` and the pipeline runs the job again (same
  version, so the same result UIDs); a series ``queued`` and waiting out a resource error (disk
  full) is made due at once;
- its deliveries, when objects of its results were refused for good by a destination
  (outbox ``failed``): they become ``pending`` again with their attempts reset, and the sender
  sends them on its next pass (their outbox copy is made again from the result folder).

A running node picks the change up within a second (it polls the database); a stopped one at its
next start. Exit status: 0 something was re-queued; 1 nothing could be (the received instances or
the result files were deleted by retention: re-send the series); 2 no such series, or nothing of
it is failed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from dicom_node.state import db

from dicom_node.delivery import outbox
from dicom_node.state import outbox as outbox_table
from dicom_node.config.model import ConfigError, load_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


@dataclass(frozen=True)
class RetryOutcome:
    exit_code: int
    lines: list[str]  # what was done, or why not


def _deliveries_in_words(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} to {name}" for name, n in sorted(counts.items()))


def retry_series(conn, series_uid: str) -> RetryOutcome:
    """Re-queue the failed job and the failed deliveries of ``series_uid`` (see the module)."""
    from dicom_node.results.records import result_files

    series = db.get_series(conn, series_uid)
    if series is None:
        return RetryOutcome(EXIT_INVALID, [f'SERIES_UID = "{series_uid}": no such series (m2unet-node status lists them)'])
    lines: list[str] = []
    problems: list[str] = []
    job_failed = series.state == db.SeriesState.FAILED
    waiting = series.state == db.SeriesState.QUEUED and series.retry_at is not None
    if job_failed or waiting:
        if series.purged:
            problems.append(
                f"series {series_uid}: its job cannot run again: retention deleted its received instances; "
                "re-send the series"
            )
        elif db.requeue_failed(conn, series_uid):
            was = "failed" if job_failed else "waiting"
            lines.append(f"series {series_uid}: {was} ({series.reason or 'no reason recorded'}); queued again, its job runs again")
    retried = outbox.retry_failed(conn, series_uid, result_files(conn, series_uid))
    if retried.retried:
        lines.append(f"series {series_uid}: failed deliveries queued again ({_deliveries_in_words(retried.retried)})")
    if retried.missing:
        problems.append(
            f"series {series_uid}: {len(retried.missing)} failed deliver{'y' if len(retried.missing) == 1 else 'ies'} "
            "cannot be retried: the result files are gone (retention); re-send the series"
        )
    if lines:
        lines.append("a running node picks this up within a second (a stopped one at its next start)")
        return RetryOutcome(EXIT_OK, lines + problems)
    if problems:
        return RetryOutcome(EXIT_FAILED, problems)
    states = outbox_table.state_counts(conn, series_uid)
    deliveries = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
    reason = f", {series.reason}" if series.reason else ""
    return RetryOutcome(
        EXIT_INVALID,
        [f'SERIES_UID = "{series_uid}": nothing to retry: not failed (state {series.state}{reason}; deliveries: {deliveries})'],
    )


def run_retry(config_path: str | os.PathLike | None, series_uid: str) -> int:
    """The command: print what was re-queued (standard output) or why not (standard error)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return EXIT_INVALID
    conn = db.connect(config.node.data_dir)
    try:
        outcome = retry_series(conn, series_uid.strip())
    finally:
        conn.close()
    stream = sys.stdout if outcome.exit_code == EXIT_OK else sys.stderr
    for line in outcome.lines:
        print(line, file=stream)
    return outcome.exit_code
