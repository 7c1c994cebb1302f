"""backup-globals: roles and other cluster-wide objects (``pg_dumpall --globals-only``).

pg_dump never saves roles, so a restore on a new server fails on every
``OWNER TO`` and ``GRANT`` without them. Role passwords are left out unless
asked (``--no-role-passwords``): the file would otherwise hold password
hashes. Same guarantees as a database backup: streamed to a ``.partial``
file, checked (cluster-dump header and completion comment), fsynced, sha256
and manifest sidecars, 0600, linked to its final name.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pgrunbook import __version__
from pgrunbook.backup.dump import BackupResult, DumpJob, _Stream, write_dump
from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import ensure_private_dir
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, now_iso, operator, recorded
from pgrunbook.infra import manual
from pgrunbook.infra.archive import GLOBALS_COMPLETE, GLOBALS_HEAD, read_sql_tail, sql_tail_is_complete
from pgrunbook.infra.container import Container
from pgrunbook.infra.postgres import Postgres
from pgrunbook.store import catalog

TASK = "backup-globals"


def run_backup_globals(
    settings: Settings,
    *,
    with_role_passwords: bool = False,
    dry_run: bool = False,
    console: Console | None = None,
) -> BackupResult | list[str]:
    console = console or Console(settings.secrets())
    when = datetime.now()
    if dry_run:
        target = settings.backup_dir / catalog.backup_name(
            settings.backup_prefix, settings.env, when, catalog.GLOBALS
        )
        return manual.globals_commands(settings, target, with_role_passwords)
    entry = Entry(TASK, settings.env, settings.db_name, settings.db_container)
    with recorded(settings.worklog_path, entry, console.redact), exclusive_lock(
        settings.backup_dir, settings.db_container, settings.db_name, TASK
    ):
        pg = Postgres(Container.find(settings.db_container), settings)
        return _globals_locked(settings, pg, when, with_role_passwords, console, entry)


def _check_globals(partial: Path, stream: _Stream) -> dict[str, Any]:
    if stream.size == 0:
        raise RunbookError("pg_dumpall の出力が空でした", "DB_USER の権限を確認して再実行")
    if GLOBALS_HEAD not in stream.head.decode("utf-8", "replace"):
        raise RunbookError("出力が pg_dumpall --globals-only の SQL ではありません")
    if not sql_tail_is_complete(read_sql_tail(partial), GLOBALS_COMPLETE):
        raise RunbookError(
            "末尾に pg_dumpall の完了コメントがありません（途中で切れています）", "再実行"
        )
    text = partial.read_text(encoding="utf-8", errors="replace")
    return {"roles": text.count("\nCREATE ROLE ")}


def _globals_locked(
    settings: Settings,
    pg: Postgres,
    when: datetime,
    with_role_passwords: bool,
    console: Console,
    entry: Entry,
) -> BackupResult:
    if with_role_passwords:
        console.warn("ロールのパスワード（ハッシュ）も保存します。ファイルの取り扱いに注意してください")
    console.step(f"接続確認: {settings.describe()}")
    server_version = pg.server_version()
    tool_version = pg.tool_version("pg_dumpall")
    ensure_private_dir(settings.backup_dir)
    final = catalog.free_name(
        settings.backup_dir, settings.backup_prefix, settings.env, when, catalog.GLOBALS
    )
    entry.file = str(final)
    started_at, started = now_iso(), time.monotonic()

    def describe(stream: _Stream, checks: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": "pgrunbook-globals",
            "manifest_version": 1,
            "kit_version": __version__,
            "env": settings.env,
            "container": settings.db_container,
            "database": None,  # cluster-wide: roles, tablespaces, role settings
            "scope": "cluster",
            "user": settings.db_user,
            "file": final.name,
            "format": catalog.GLOBALS,
            "options": {"role_passwords": with_role_passwords},
            "size": stream.size,
            "sha256": stream.hash.hexdigest(),
            "server_version": server_version,
            "pg_dumpall_version": tool_version,
            "started_at": started_at,
            "finished_at": now_iso(),
            "duration_seconds": round(time.monotonic() - started, 3),
            "operator": operator(),
            "host": socket.gethostname(),
            **checks,
        }

    console.step(f"pg_dumpall --globals-only → {final.name}{catalog.PARTIAL_SUFFIX}")
    argv = manual.globals_argv(settings, with_role_passwords)
    stream, manifest = write_dump(pg, settings, DumpJob(argv, final, "pg_dumpall", _check_globals, describe),
                                  console)
    sha256 = stream.hash.hexdigest()
    entry.sha256 = sha256
    entry.details.update({"size": stream.size, "role_passwords": with_role_passwords})
    console.summary(
        f"ロール等のバックアップ完了: {final} ({human_size(stream.size)}, ロール {manifest['roles']} 件, "
        f"sha256 {sha256[:12]}…)"
    )
    return BackupResult(final, stream.size, sha256, manifest)
