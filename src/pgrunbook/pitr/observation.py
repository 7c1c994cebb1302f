"""What ``pitr-status`` saw, kept for the metrics: ``backups/<env>/.pitr-status.json``.

The archiver and the repository are only known to ``pitr-status``
(pg_stat_archiver, ``pgbackrest info --output=json``); it saves what it saw
here (0600, written atomically), and ``pitr-backup`` refreshes the list of base
backups. ``monitoring/pitr_metrics`` reads the file, so that the metrics are
written from the host's files alone, like every other metric.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pgrunbook.core.console import Console
from pgrunbook.core.files import ensure_private_dir, write_private
from pgrunbook.core.settings import Settings
from pgrunbook.pitr.pgbackrest import BackupSet
from pgrunbook.pitr.status import ArchiverState, Status

OBSERVATION_FILE = ".pitr-status.json"


def observation_path(settings: Settings) -> Path:
    return settings.backup_dir / OBSERVATION_FILE


def _stamp(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def _archiver(state: ArchiverState) -> dict[str, Any]:
    return {
        "last_archived_wal": state.last_archived_wal,
        "last_archived": _stamp(state.last_archived_time),
        "failed_count": state.failed_count,
        "last_failed_wal": state.last_failed_wal,
        "last_failed": _stamp(state.last_failed_time),
        "failing": state.failing,
        "waiting": state.waiting,
        "oldest_waiting": _stamp(state.oldest_waiting),
        "server_now": _stamp(state.now),
    }


def _backups(backups: list[BackupSet]) -> list[dict[str, Any]]:
    return [{"label": b.label, "type": b.kind, "stop": b.stopped.timestamp()} for b in backups]


def load(settings: Settings) -> dict[str, Any]:
    try:
        data = json.loads(observation_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(settings: Settings, changes: dict[str, Any]) -> None:
    """Merge into the observation: what was not read this time stays as last seen.

    Written to a temporary file of its own (pitr-status from cron and a pitr-backup may
    write at once), then renamed: a reader sees the old file or the new one."""
    data = {**load(settings), **changes, "env": settings.env, "stanza": settings.pitr_stanza}
    ensure_private_dir(settings.backup_dir)
    write_private(observation_path(settings), json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n")


def _warn(console: Console, error: OSError, settings: Settings) -> None:
    console.warn(f"PITR の観測結果 {observation_path(settings)} を書けませんでした: "
                 f"{error.strerror or error}（メトリクスが古いままになります。結果は変わりません）")


def record_status(settings: Settings, status: Status, console: Console) -> bool:
    """Save what pitr-status saw (True when saved: the caller then rewrites METRICS_FILE);
    a failure is a warning."""
    if not settings.pitr_stanza:
        return False  # nothing to watch: no file, no PITR samples
    changes: dict[str, Any] = {"checked": time.time(), "exit_code": status.exit_code,
                               "line": console.redact(status.line)}  # as printed: no secret in the file
    if status.state is not None:
        changes["archiver"] = _archiver(status.state)
    if status.backups is not None:
        changes["backups"] = _backups(status.backups)
    try:
        _save(settings, changes)
    except OSError as error:
        _warn(console, error, settings)
        return False
    return True


def record_backups(settings: Settings, backups: list[BackupSet], console: Console) -> None:
    """After pitr-backup: the repository's list of base backups (METRICS_FILE follows the work log)."""
    try:
        _save(settings, {"backups": _backups(backups), "backups_read": time.time()})
    except OSError as error:
        _warn(console, error, settings)


