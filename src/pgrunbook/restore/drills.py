"""Restore drills with evidence (issue 13): each ``verify --restore-test`` leaves one
``restore-drill`` line in the work log: the file, the measured time to recover
(a real restore into a throw-away database and the row-count check), how many
tables and rows were compared with the manifest, and the result.

bcgov/backup-container restores every backup for real; what an auditor (or the
team at 2 a.m.) wants to know is that the last drill passed and how long a
recovery takes. ``invoke report`` draws these lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.store import catalog

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
    return line


def run_drill(settings: Settings, file: str, console: Console,
              restore_test: Callable[[Settings, str, Console], Any] | None = None) -> dict[str, Any]:
    """Run the restore test on ``file`` and record it as a drill, passed or failed."""
    if restore_test is None:
        from pgrunbook.restore import restore_test
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
