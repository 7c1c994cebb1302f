"""``verify --restore-test``: a full restore into a throwaway database, checked,
dropped (or, with RESTORE_PRESTAGE and the env's newest backup, kept closed:
prestage.py), and recorded as a drill.

Each restore test leaves one ``restore-drill`` line in the work log: the file,
the measured time to recover (a real restore into a throw-away database and the
row-count check), how many tables and rows were compared with the manifest, and
the result. What an auditor (or the team at 2 a.m.) wants to know is that the
last drill passed and how long a recovery takes; ``check``, ``report`` and the
metrics read these lines (``drills``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.postgres import (
    Postgres,
)
from pgrunbook.restore import prestage
from pgrunbook.restore.checks import DatabaseSummary, compare_with_manifest, summarize_database
from pgrunbook.restore.databases import create_database, drop_kit_database, kit_name, mark_text
from pgrunbook.restore.guards import check_versions
from pgrunbook.restore.source import inspect_with_facts
from pgrunbook.restore.staging import RestoreJob, RestoreOptions, restore_into
from pgrunbook.store import catalog


def restore_test(settings: Settings, file: str | None, console: Console) -> DatabaseSummary:
    entry = Entry("verify-restore-test", settings.env, settings.db_name, settings.db_container)
    with recorded(settings.worklog_path, entry, console.redact):
        pg = Postgres(discovery.db_container(settings), settings)
        source, facts = inspect_with_facts(pg, settings, file, console)
        entry.file = str(source.path)
        if source.env not in (None, settings.env):
            raise Refused(f"{source.path.name} は環境 {source.env} のファイルです",
                          f"--env={source.env} で実行")
        check_versions(source, facts.version)
        why_not = prestage.wanted_for(settings, source)
        if settings.restore_prestage and why_not:
            console.step(f"事前展開はしません（{why_not}）")
        if why_not is None:
            prestage.make_room(pg, settings, facts, source, console)
        target = kit_name(settings, "verify" if why_not else prestage.ROLE)
        kept = False
        options = RestoreOptions()
        # kept prestaged, it may become the live database: in the live one's tablespace
        in_place = why_not is None and bool(facts.database and facts.database.tablespace_create)
        create_database(pg, target, mark_text("verify", settings, source.path.name), like=facts,
                        tablespace=in_place)
        try:
            entry.sha256 = restore_into(pg, settings, RestoreJob(source, target, options), console, facts)
            summary = summarize_database(pg, target, source.table_counts())
            differences = compare_with_manifest(source, summary)
            if why_not is None and not differences and source.manifest is not None:
                prestage.keep(pg, settings, prestage.Restored(
                    target, source, entry.sha256, prestage.restore_flags(source, options, replace=False),
                    sum(summary.tables.values())), console)
                kept = True
        finally:
            if not kept:
                drop_kit_database(pg, target)
        if source.manifest is None:
            console.warn("マニフェストがないため行数の照合はできません（復元できることのみ確認）")
        if differences:
            raise RunbookError("復元テストで差異: " + "; ".join(differences[:5]),
                               "このバックアップは信用できません。取り直して再検証")
        entry.details["tables"] = len(summary.tables)
        entry.details["prestaged"] = target if kept else None
        where = (f"事前展開 DB {target} として接続を閉じて保管（restore-replace --file={source.path.name} は"
                 "切り替えだけで済みます）" if kept else f"一時 DB {target} は削除済み")
        console.summary(f"復元テスト OK: {source.path.name}（テーブル {len(summary.tables)}、"
                        f"行数合計 {sum(summary.tables.values())}、{where}）")
        return summary


# ---- the drill's record ---------------------------------------------------------------

TASK = "restore-drill"


def compared_counts(manifest: dict[str, Any] | None) -> tuple[int, int]:
    """(tables, rows) the manifest lets a restore compare: (0, 0) without row counts."""
    if not manifest or manifest.get("row_counts") in (None, "none"):
        return 0, 0
    tables = manifest.get("tables") or []
    rows = sum(max(int(t.get("rows", 0)), 0) for t in tables)
    return len(tables), rows


def record(settings: Settings, path: Path, seconds: float, result: str,
           error: str | None = None, restored_tables: int | None = None) -> dict[str, Any]:
    """Append the drill's line to the env's work log and return it."""
    manifest = catalog.read_manifest(path)
    tables, rows = compared_counts(manifest)
    line = {
        "time": worklog.now_iso(),
        "operator": worklog.operator(),
        "task": TASK,
        "env": settings.env,
        "container": settings.db_container,
        "database": settings.db_name,
        "file": str(path),
        "sha256": catalog.read_checksum(path),
        "result": result,
        "error": error,
        "duration_seconds": round(seconds, 3),
        "backup_size": path.stat().st_size if path.exists() else None,
        "tables_compared": tables,
        "rows_compared": rows,
        "tables_restored": restored_tables,
    }
    worklog.append(settings.worklog_path, line)
    worklog.announce(line, ("metrics",))  # the drill gauge; the run's own line already notified
    return line


def run_drill(settings: Settings, file: str, console: Console) -> dict[str, Any]:
    """Run the restore test on ``file`` and record it as a drill, passed or failed."""
    path = Path(file)
    started = time.monotonic()
    try:
        summary = restore_test(settings, file, console)
    except RunbookError as error:
        record(settings, path, time.monotonic() - started, "failed", console.redact(error.one_line()))
        raise
    except (KeyboardInterrupt, SystemExit):
        record(settings, path, time.monotonic() - started, "interrupted", "中断されました")
        raise
    tables = len(getattr(summary, "tables", {}) or {})
    line = record(settings, path, time.monotonic() - started, "ok", restored_tables=tables)
    console.summary(f"復元訓練を記録しました: 復旧にかかった時間 {line['duration_seconds']:.1f} 秒、"
                    f"照合したテーブル {line['tables_compared']}・行 {line['rows_compared']}")
    return line


def drills(settings: Settings) -> list[dict[str, Any]]:
    """This env's drill lines, oldest first."""
    return [r for r in worklog.read(settings.worklog_path)
            if r.get("task") == TASK and r.get("env") == settings.env]
