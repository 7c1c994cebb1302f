"""Prometheus metrics for point-in-time recovery (pgBackRest; runbooks/pitr.md).

The kit's metrics come from the host's files (metrics.py), so that the
textfile can be rewritten after every work-log line without asking the
database. The archiver and the repository are only known to ``pitr-status``
(pg_stat_archiver, ``pgbackrest info --output=json``); it therefore saves what
it saw in ``backups/<env>/.pitr-status.json`` (0600, written atomically), and
``pitr-backup`` refreshes the list of base backups there. The metrics are read
from that file and, for the drill, from the work log.

Times are exported as UNIX timestamps, never as ages: an age frozen at the
last run would look fine after cron stopped running ``pitr-status``, while
``time() - pgrunbook_pitr_wal_last_archived_timestamp_seconds`` keeps growing.
``pgrunbook_pitr_status_timestamp_seconds`` tells when the observation was
made. As elsewhere, "never" is 0 for timestamps and success; the status of a
``pitr-status`` that never ran is 2, and a count the DB user may not read
(``.ready`` files without pg_monitor) is NaN.

Envs without PITR_STANZA have no PITR samples; a file with no such env has no
PITR families at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgrunbook.core import worklog
from pgrunbook.pitr import observation

if TYPE_CHECKING:
    from pgrunbook.core.settings import Settings

BACKUP_KINDS = ("full", "diff", "incr")
DRILL_TASK = "pitr-drill"
NEVER_STATUS = 2.0  # no pitr-status yet: as unknown as a DB that cannot be reached

# name -> (help, labels besides ``env``)
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pgrunbook_pitr_status_exit_code": (
        "Exit code of the last pitr-status: 0 ok, 1 warning, 2 error (2 if it never ran)", ()),
    "pgrunbook_pitr_status_timestamp_seconds": (
        "When the last pitr-status ran (UNIX time); 0 if never", ()),
    "pgrunbook_pitr_wal_last_archived_timestamp_seconds": (
        "last_archived_time of pg_stat_archiver (UNIX time): when the last WAL segment reached the "
        "repository; 0 if none", ()),
    "pgrunbook_pitr_archive_failures": (
        "failed_count of pg_stat_archiver: failed archive attempts since the statistics were reset", ()),
    "pgrunbook_pitr_archive_last_failed_timestamp_seconds": (
        "last_failed_time of pg_stat_archiver (UNIX time); 0 if none", ()),
    "pgrunbook_pitr_archive_failing": (
        "1 if the last archive attempt failed (a failure newer than the last success), else 0", ()),
    "pgrunbook_pitr_wal_waiting_segments": (
        "WAL segments waiting to be archived (.ready files); NaN without pg_monitor", ()),
    "pgrunbook_pitr_wal_oldest_waiting_timestamp_seconds": (
        "When the oldest segment waiting to be archived was completed (UNIX time); 0 if none waits, "
        "NaN without pg_monitor", ()),
    "pgrunbook_pitr_backup_last_timestamp_seconds": (
        "End of the newest pgBackRest base backup of this type in the repository (UNIX time); 0 if none",
        ("type",)),
    "pgrunbook_pitr_backups": ("Number of pgBackRest base backups of this type in the repository",
                               ("type",)),
    "pgrunbook_pitr_drill_last_timestamp_seconds": (
        "End of the last pitr-drill (UNIX time), whatever its result; 0 if none", ()),
    "pgrunbook_pitr_drill_last_duration_seconds": ("Duration of the last pitr-drill", ()),
    "pgrunbook_pitr_drill_last_success": ("1 if the last pitr-drill passed, else 0", ()),
}


# --- the values ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def _number(value: Any, missing: float = 0.0) -> float:
    if value is None:
        return missing
    try:
        return float(value)
    except (TypeError, ValueError):
        return missing


def values(seen: dict[str, Any], drills: list[dict[str, Any]]) -> list[Sample]:
    """The samples of one env (pure): its saved observation and its pitr-drill work-log lines."""
    archiver = seen.get("archiver") or {}
    backups = [b for b in seen.get("backups") or [] if isinstance(b, dict)]
    waiting = archiver.get("waiting") if archiver else 0
    samples = [
        Sample("pgrunbook_pitr_status_exit_code", {},
               _number(seen.get("exit_code"), NEVER_STATUS)),
        Sample("pgrunbook_pitr_status_timestamp_seconds", {}, _number(seen.get("checked"))),
        Sample("pgrunbook_pitr_wal_last_archived_timestamp_seconds", {},
               _number(archiver.get("last_archived"))),
        Sample("pgrunbook_pitr_archive_failures", {}, _number(archiver.get("failed_count"))),
        Sample("pgrunbook_pitr_archive_last_failed_timestamp_seconds", {},
               _number(archiver.get("last_failed"))),
        Sample("pgrunbook_pitr_archive_failing", {}, float(bool(archiver.get("failing")))),
        Sample("pgrunbook_pitr_wal_waiting_segments", {}, _number(waiting, math.nan)),
        Sample("pgrunbook_pitr_wal_oldest_waiting_timestamp_seconds", {},
               math.nan if waiting is None else _number(archiver.get("oldest_waiting"))),
    ]
    for kind in BACKUP_KINDS:
        stops = [_number(b.get("stop")) for b in backups if b.get("type") == kind]
        samples += [
            Sample("pgrunbook_pitr_backup_last_timestamp_seconds", {"type": kind}, max(stops, default=0.0)),
            Sample("pgrunbook_pitr_backups", {"type": kind}, float(len(stops))),
        ]
    last = drills[-1] if drills else None
    samples += [
        Sample("pgrunbook_pitr_drill_last_timestamp_seconds", {}, worklog.ended_at(last)),
        Sample("pgrunbook_pitr_drill_last_duration_seconds", {},
               _number((last or {}).get("duration_seconds"))),
        Sample("pgrunbook_pitr_drill_last_success", {}, float(bool(last and last.get("result") == "ok"))),
    ]
    return samples


def collect_env(settings: Settings) -> list[Sample]:
    """One env's PITR samples; none without PITR_STANZA."""
    if not settings.pitr_stanza:
        return []
    drills = [r for r in worklog.read(settings.worklog_path)
              if r.get("env") == settings.env and r.get("task") == DRILL_TASK]
    return values(observation.load(settings), drills)


def register(client, registry, envs: list[Settings]) -> None:
    """Add the PITR gauges of these envs to a metrics.registry_for registry."""
    collected = [(s.env, collect_env(s)) for s in envs]
    if not any(samples for _, samples in collected):
        return
    gauges = {name: client.Gauge(name, text, ["env", *labels], registry=registry)
              for name, (text, labels) in METRICS.items()}
    for env, samples in collected:
        for sample in samples:
            gauges[sample.name].labels(env=env, **sample.labels).set(sample.value)
