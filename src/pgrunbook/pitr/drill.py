"""``pitr-drill``: a restore to "N minutes ago" into a scratch container, then a
comparison with the live database (``compare_tables``), the time it took
recorded, and the scratch container removed.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.infra.container import engine
from pgrunbook.infra.postgres import (
    USER_TABLES_FROM,
    Postgres,
    TableCount,
    quote_literal,
)
from pgrunbook.pitr.pgbackrest import (
    archive_settings,
    drop_commands,
    live_server,
    require_stanza,
    restore_commands,
    server_time,
    work_entry,
)
from pgrunbook.pitr.scratch import Scratch, parse_target_time, remove, restore_scratch, target_literal

# --- the drill -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableCheck:
    """One table of the drill: the restored count against the live database."""

    schema: str
    name: str
    restored: int | None  # None: not in the restored copy
    live_now: int | None  # None: not in the live database any more
    live_as_of: int | None  # live rows committed at or before the target; None: unknown

    @property
    def verdict(self) -> str:
        if self.restored is not None and self.live_as_of is not None and self.restored < self.live_as_of:
            return "lost"
        if self.restored is None:
            return "only-live"
        if self.live_now is None:
            return "only-restored"
        return "ok"

    def line(self) -> str:
        def cell(value: int | None) -> str:
            return "—" if value is None else str(value)

        words = {"ok": "OK", "lost": "行の欠落", "only-live": "復元先になし（対象時刻より後に作成？）",
                 "only-restored": "本番になし（対象時刻より後に削除？）"}
        return (f"{self.schema}.{self.name}\t{cell(self.restored)}\t{cell(self.live_now)}\t"
                f"{cell(self.live_as_of)}\t{words[self.verdict]}")


def compare_tables(restored: list[TableCount],
                   live: list[tuple[str, str, int, int | None]]) -> list[TableCheck]:
    """Restored counts against the live database (pure).

    ``live``: (schema, table, rows now, rows whose current version committed at
    or before the target, or None without track_commit_timestamp). Rows
    committed before the target that still exist unchanged must all be in the
    copy, so ``restored >= live_as_of`` must hold for every table; the rest of
    any difference is what changed after the target (inserts, updates,
    deletes), which the drill reports but does not judge."""
    restored_by = {(c.schema, c.name): c.rows for c in restored}
    live_by = {(schema, name): (now, as_of) for schema, name, now, as_of in live}
    checks = []
    for key in sorted(set(restored_by) | set(live_by)):
        now, as_of = live_by.get(key, (None, None))
        checks.append(TableCheck(key[0], key[1], restored_by.get(key), now, as_of))
    return checks


def live_counts_as_of(pg: Postgres, target: datetime,
                      with_commit_times: bool) -> list[tuple[str, str, int, int | None]]:
    """Per table: rows now and, with track_commit_timestamp, rows whose version
    committed at or before the target (an unknown commit time counts as before:
    a row older than the tracking)."""
    as_of = "NULL::bigint"
    if with_commit_times:
        as_of = ("count(*) FILTER (WHERE coalesce(pg_xact_commit_timestamp(xmin) <= "
                 f"{quote_literal(target_literal(target))}::timestamptz, true))")
    # one scan per table for both counts; format(%I) quotes the names
    counted = f"""query_to_xml(format(
    'SELECT count(*) AS c, %s AS a FROM %I.%I', {quote_literal(as_of)}, n.nspname, c.relname),
    false, true, '')"""
    sql = f"""SELECT nspname, relname, (xpath('/row/c/text()', x))[1]::text::bigint,
       (xpath('/row/a/text()', x))[1]::text::bigint
FROM (SELECT n.nspname, c.relname, {counted} AS x {USER_TABLES_FROM}) AS t ORDER BY 1, 2"""
    rows = pg.query(sql)
    return [(r[0], r[1], int(r[2]), None if r[3] in ("", None) else int(r[3])) for r in rows]


@dataclass
class DrillResult:
    scratch: Scratch
    checks: list[TableCheck]
    with_commit_times: bool

    @property
    def lost(self) -> list[TableCheck]:
        return [check for check in self.checks if check.verdict == "lost"]

    def lines(self) -> list[str]:
        header = "テーブル\t復元\t本番（現在）\t本番（対象時刻までのコミット）\t判定"
        return [header, *(check.line() for check in self.checks)]


def pitr_drill(settings: Settings, minutes: float, target_text: str | None, dry_run: bool,
               console: Console) -> list[str] | DrillResult:
    """Restore to N minutes ago into a scratch container, compare with live, remove it."""
    require_stanza(settings)
    if minutes <= 0:
        raise RunbookError(f"--minutes={minutes} は 0 より大きくしてください", exit_code=2)
    if dry_run:
        when = parse_target_time(target_text) if target_text else \
            datetime.now(timezone.utc) - timedelta(minutes=minutes)
        scratch = f"{settings.db_container}-pitr-{datetime.now():%Y%m%d-%H%M%S}"
        return [*restore_commands(settings, target_literal(when), scratch),
                f"docker exec {shlex.quote(settings.db_container)} psql -U {shlex.quote(settings.db_user)} "
                f"-d {shlex.quote(settings.db_name)} -c '\\dt+'   # 本番と行数を比べる",
                *drop_commands(scratch)]
    entry = work_entry(settings, "pitr-drill")
    with worklog.recorded(settings.worklog_path, entry, console.redact), \
            exclusive_lock(settings.backup_dir, settings.db_container, "pitr-restore", "pitr-drill"):
        _, pg = live_server(settings)
        if target_text:
            target = parse_target_time(target_text)
        else:
            now = server_time(pg.query("SELECT clock_timestamp()", "postgres")[0][0])
            assert now is not None
            target = now - timedelta(seconds=minutes * 60)
        with_commit_times = archive_settings(pg).track_commit_timestamp
        started = time.monotonic()
        scratch = restore_scratch(settings, target, console, "pitr-drill", strict_flush=True, entry=entry)
        builder_client = engine()
        try:
            live = live_counts_as_of(pg, target, with_commit_times)
            result = DrillResult(scratch, compare_tables(scratch.counts, live), with_commit_times)
        finally:
            remove(builder_client, scratch)
        entry.details.update(total_seconds=round(time.monotonic() - started, 1),
                             tables=len(result.checks),
                             lost_tables=[f"{c.schema}.{c.name}" for c in result.lost],
                             commit_times=with_commit_times)
        for line in scratch.report_lines(settings.db_name)[:5]:
            console.summary(line)
        for line in result.lines():
            console.result(line)
        if result.lost:
            names = ", ".join(f"{c.schema}.{c.name}" for c in result.lost)
            raise RunbookError(
                f"訓練: 対象時刻までにコミットされた行が復元先で足りません（{names}）",
                "WAL の欠け（pitr-status）を確認し、出力と作業ログを保存して報告")
        if not with_commit_times:
            console.warn("track_commit_timestamp=off: 対象時刻の行数は本番側で数えられないため、"
                         "現在の行数だけを並べました")
    seconds = scratch.restore_seconds + scratch.recovery_seconds
    console.summary(f"訓練 OK: {target_literal(target)} の時点を {seconds:.1f} 秒で復元し"
                    f"（テーブル {len(result.checks)} 個、行の欠落なし）、検証用コンテナは削除しました")
    return result
