"""``pitr-status``: pg_stat_archiver (last archived WAL and its age, failures, WAL
waiting) and the newest base backup; 0 ok, 1 warning, 2 error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from pgrunbook.core import durations
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.infra.container import Container
from pgrunbook.infra.postgres import (
    Postgres,
)
from pgrunbook.pitr.pgbackrest import (
    BackupSet,
    Stanza,
    live_server,
    pgbackrest_error,
    repository_backups,
    require_stanza,
    server_time,
)

# --- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiverState:
    archive_mode: str
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    now: datetime
    waiting: int | None  # .ready files; None without pg_monitor
    oldest_waiting: datetime | None

    @property
    def failing(self) -> bool:
        """The last attempt failed: a failure newer than the last success (or none ever)."""
        return self.last_failed_time is not None and (
            self.last_archived_time is None or self.last_failed_time > self.last_archived_time)


STATUS_SQL = """
SELECT json_build_object(
  'archive_mode', current_setting('archive_mode'),
  'last_archived_wal', s.last_archived_wal, 'last_archived_time', s.last_archived_time,
  'failed_count', s.failed_count, 'last_failed_wal', s.last_failed_wal,
  'last_failed_time', s.last_failed_time, 'now', clock_timestamp(),
  'waiting', CASE WHEN pg_has_role('pg_monitor', 'USAGE') THEN (
      SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') END,
  'oldest_waiting', CASE WHEN pg_has_role('pg_monitor', 'USAGE') THEN (
      SELECT min(modification) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') END)
FROM pg_stat_archiver s
"""


def archiver_state(pg: Postgres) -> ArchiverState:
    raw = json.loads(pg.query(STATUS_SQL, "postgres")[0][0])
    return ArchiverState(
        raw["archive_mode"], raw["last_archived_wal"], server_time(raw["last_archived_time"]),
        int(raw["failed_count"] or 0), raw["last_failed_wal"], server_time(raw["last_failed_time"]),
        server_time(raw["now"]) or datetime.now(timezone.utc),
        None if raw["waiting"] is None else int(raw["waiting"]), server_time(raw["oldest_waiting"]),
    )


def describe_age(age: timedelta) -> str:
    """As core.durations.describe_age, with seconds under two minutes (WAL archiving is that quick)."""
    seconds = int(age.total_seconds())
    if 0 <= seconds < 120:
        return f"{seconds}秒"
    return durations.describe_age(age)


@dataclass(frozen=True)
class Status:
    exit_code: int  # 0 ok, 1 warning, 2 error
    line: str
    # what pitr-status saw, for the metrics (pitr_metrics); None: not read this time
    state: ArchiverState | None = None
    backups: list[BackupSet] | None = None


def status_label(env: str, stanza: str) -> str:
    return f"env={env} stanza={stanza or '-'}"


def archiving_failure(env: str, stanza: str, state: ArchiverState,
                      reason: str | None = None) -> Status | None:
    """The errors pg_stat_archiver shows on its own (pure): archiving off, failing, never done."""
    label = status_label(env, stanza)
    if state.archive_mode not in ("on", "always"):
        return Status(2, f"CRITICAL {label}: archive_mode={state.archive_mode}"
                         "（WAL をアーカイブしていません）"
                         f" → invoke pitr-setup --env={env} の案内どおりに設定")
    if state.failing:
        why = f": {reason}" if reason else ""
        since = describe_age(state.now - state.last_failed_time)
        return Status(2, f"CRITICAL {label}: WAL {state.last_failed_wal} のアーカイブが失敗しています"
                         f"（失敗 {state.failed_count} 回、最後 {since}前）"
                         f"{why} → archive_command とリポジトリ（pgbackrest.conf の repo1-*）を確認し、"
                         f"docker logs で pgBackRest の ERROR を見る")
    if state.last_archived_wal is None or state.last_archived_time is None:
        return Status(2, f"CRITICAL {label}: まだ WAL が 1 つもアーカイブされていません"
                         f" → invoke pitr-setup --env={env}")
    return None


@dataclass(frozen=True)
class StatusLimits:
    """How old is too old for pitr-status: a WAL left waiting for the archive
    (``max_age``) and the newest base backup (``backup_max_age``)."""

    max_age: timedelta
    backup_max_age: timedelta


def evaluate_status(env: str, stanza: str, state: ArchiverState, backups: list[BackupSet],
                    limits: StatusLimits, reason: str | None = None) -> Status:
    """The monitoring verdict (pure): failures and no archive are errors, delays warnings."""
    max_age, backup_max_age = limits.max_age, limits.backup_max_age
    failure = archiving_failure(env, stanza, state, reason)
    if failure:
        return failure
    assert state.last_archived_time is not None
    label = status_label(env, stanza)
    if not backups:
        return Status(2, f"CRITICAL {label}: ベースバックアップがありません"
                         f" → invoke pitr-backup --env={env} --type=full")
    archived_age = state.now - state.last_archived_time
    newest = backups[-1]
    backup_age = state.now - newest.stopped
    facts = (f"最後にアーカイブした WAL {state.last_archived_wal}（{describe_age(archived_age)}前）、"
             f"待ち {'?' if state.waiting is None else state.waiting}、"
             f"最新のベースバックアップ {newest.label}（{describe_age(backup_age)}前）")
    waiting_too_long = state.waiting and archived_age > max_age and (
        state.oldest_waiting is None or state.now - state.oldest_waiting > max_age)
    if waiting_too_long:
        return Status(1, f"WARNING {label}: WAL {state.waiting} 個がアーカイブ待ちのまま "
                         f"{describe_age(archived_age)}（上限 {describe_age(max_age)}）: {facts}")
    if backup_age > backup_max_age:
        return Status(1, f"WARNING {label}: 最新のベースバックアップが古すぎます（上限 "
                         f"{describe_age(backup_max_age)}）: {facts} → cron の pitr-backup を確認")
    return Status(0, f"OK {label}: {facts}")


def last_pgbackrest_error(container: Container, redact) -> str | None:
    """The newest pgBackRest ERROR line in the container's output (archive-push writes there)."""
    try:
        logs = container.model.logs(tail=400).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - only an explanation
        return None
    found = pgbackrest_error(logs)
    return redact(f"ERROR {found}") if found else None


def pitr_status(settings: Settings, max_age: timedelta, backup_max_age: timedelta,
                console: Console) -> Status:
    """Monitoring: like ``status``, one line, no work-log line; any failure is 2."""
    env, stanza = settings.env, settings.pitr_stanza
    state: ArchiverState | None = None
    try:
        require_stanza(settings)
        container, pg = live_server(settings)
        state = archiver_state(pg)
        reason = None
        if state.last_failed_time is not None:
            reason = last_pgbackrest_error(container, console.redact)
        failure = archiving_failure(env, stanza, state, reason)
        if failure:
            return replace(failure, state=state)
        backups = repository_backups(Stanza(container, settings, stanza, console), "status")
    except RunbookError as error:
        return Status(2, f"CRITICAL {status_label(env, stanza)}: {error.one_line().removeprefix('エラー: ')}",
                      state=state)
    verdict = evaluate_status(env, stanza, state, backups, StatusLimits(max_age, backup_max_age), reason)
    return replace(verdict, state=state, backups=backups)


