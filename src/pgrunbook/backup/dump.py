"""Custom and plain dumps: streamed to a .partial file, checked, fsynced, renamed.

Nothing that looks like a backup exists until every check has passed: the
dump streams into ``<name>.partial``; pg_dump's exit code, the size, the
header (or SQL ending) and the TOC are checked; the checksum and manifest are
written; only then is the file linked to its final name (never over an
existing one). Any failure removes the partial file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import os
import queue
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pgrunbook import __version__
from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import ensure_private_dir, file_chunks, fsync_directory
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, now_iso, operator, recorded
from pgrunbook.infra import manual, versions
from pgrunbook.infra.archive import (
    MAGIC,
    SQL_HEAD,
    ArchiveError,
    major_version,
    parse_header,
    sql_tail_is_complete,
)
from pgrunbook.infra.container import Container
from pgrunbook.infra.postgres import (
    Postgres,
    SnapshotSession,
    TableCount,
    explain_failure,
)
from pgrunbook.store import catalog, drift, pins


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    sha256: str
    manifest: dict[str, Any]


def toc_entries(pg: Postgres, path: Path) -> list[str]:
    """pg_restore --list of a custom archive, fed through stdin (stops after the TOC)."""
    result = pg.read(["pg_restore", "--list"], stdin=lambda: file_chunks(path, 256 * 1024))
    if not result.ok:
        raise RunbookError(
            f"pg_restore --list が目次を読めません: {result.error_text()}",
            "ファイルが壊れているか途中で切れています。バックアップを取り直す",
        )
    return _toc_lines(result.stdout)


def _toc_lines(stdout: bytes) -> list[str]:
    text = stdout.decode("utf-8", "replace")
    return [line for line in text.splitlines() if line and not line.startswith(";")]


class TocBeside:
    """``pg_restore --list`` fed the dump's bytes as they arrive. pg_dump writes a custom
    archive to a pipe as header, TOC, then the data, and pg_restore stops after the TOC:
    the TOC check is done while the dump runs, not by one more exec after it (the last
    step of a tiny backup). Memory stays flat: at most LIMIT bytes wait for it. When this
    reader failed, lost its answer or had not finished by then, ``entries`` reads the
    finished file as before (``toc_entries``): its failure is never the verdict."""

    LIMIT = 4 << 20

    def __init__(self, pg: Postgres) -> None:
        self.pg = pg
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._queued = 0
        self._closed = False
        self._lines: list[str] | None = None
        self._thread = threading.Thread(target=self._read, name="toc-beside", daemon=True)
        self._thread.start()

    def _chunks(self) -> Iterator[bytes]:
        while (chunk := self._queue.get()) is not None:
            yield chunk

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # any failure: the file is read after the dump
            # framed: an answer the engine lost (exit code 0, no output) is no TOC
            result = self.pg.run(["pg_restore", "--list"], stdin=self._chunks(), framed=True)
            if result.ok and result.complete:
                self._lines = _toc_lines(result.stdout)

    def feed(self, data: bytes) -> None:
        if self._closed:
            return
        self._queued += len(data)
        if self._queued > self.LIMIT or not self._thread.is_alive():
            self.close()  # (a TOC this long is read from the file)
            return
        self._queue.put(data)

    def close(self) -> None:
        """The dump has ended (or failed): pg_restore sees the end of its input."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def entries(self, path: Path) -> list[str]:
        self.close()
        self._thread.join()
        return self._lines if self._lines is not None else toc_entries(self.pg, path)


def table_data_count(entries: list[str]) -> int:
    return sum(1 for line in entries if " TABLE DATA " in line)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def host_write_error(error: OSError, directory: Path, env: str, written: int = 0) -> RunbookError:
    """The host's disk said no (full, quota, read-only, permissions): one line with
    what to do. The caller has removed (or is removing) what it wrote."""
    if error.errno in DISK_FULL:
        try:
            size = f"、容量 {human_size(shutil.disk_usage(directory).total)}"
        except OSError:
            size = ""
        done = f"{human_size(written)} 書いたところで" if written else ""
        return RunbookError(
            f"バックアップ先 {directory} のディスクが{done}いっぱいになりました"
            f"（{error.strerror}{size}）。作成途中のファイルは削除しました",
            f"古いバックアップを削除（invoke prune --env={env}）するか別の場所へ移して空きを作る、"
            "または BACKUP_DIR を空きのあるディスクにして再実行（df -h で確認）",
        )
    return RunbookError(
        f"バックアップ先 {directory} に書き込めません（{error.strerror}）",
        "ディレクトリの権限とマウント状態（読み取り専用など）を確認して再実行",
    )


@contextlib.contextmanager
def host_writes(directory: Path, env: str, written: Callable[[], int] = lambda: 0) -> Iterator[None]:
    """Turn an OSError of the host's files into host_write_error."""
    try:
        yield
    except OSError as error:
        raise host_write_error(error, directory, env, written()) from None


class _HostWriteFailed(Exception):
    """os.write into the partial file failed. Not an OSError, so that nothing on the way
    up through the exec (which treats socket OSErrors as its own) swallows it."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


HEAD_BYTES = 8192


class _Stream:
    """Receives pg_dump's stdout: writes, hashes and counts, memory flat."""

    def __init__(self, fd: int, console: Console, on_first_data: Callable[[], None] | None = None,
                 also_to: Callable[[bytes], None] | None = None) -> None:
        self.fd = fd
        self.console = console
        self.on_first_data = on_first_data
        self.also_to = also_to
        self.hash = hashlib.sha256()
        self.size = 0
        self.head = b""
        self.started = time.monotonic()

    def __call__(self, data: bytes) -> None:
        if self.on_first_data is not None:
            self.on_first_data()  # the tool is running (pg_dump: it has imported the snapshot)
            self.on_first_data = None
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except OSError as error:
                raise _HostWriteFailed(error) from None
            view = view[written:]
        self.hash.update(data)
        if self.also_to is not None:
            self.also_to(data)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self.size += len(data)
        self.console.progress(self.size, self.started, "pg_dump")


@dataclass(frozen=True)
class BackupRequest:
    """What ``backup`` / ``backup-sql`` is asked for. ``label`` goes into the file name and
    the manifest; ``keep`` ("10y", "18m", "2036-03-31") pins the backup until that date."""

    fmt: str = "custom"  # custom (pg_dump -F c) or plain (-F p)
    no_owner: bool = False
    no_acl: bool = False
    dry_run: bool = False
    label: str | None = None
    keep: str | None = None

    @property
    def task(self) -> str:
        return "backup" if self.fmt == "custom" else "backup-sql"


@dataclass(frozen=True)
class _Plan:
    """A request checked and dated: what the locked run makes."""

    request: BackupRequest
    when: datetime
    label: str | None
    keep_until: date | None


def run_backup(
    settings: Settings, request: BackupRequest = BackupRequest(), console: Console | None = None
) -> BackupResult | list[str]:
    """Back up the env's database. Returns the result, or the manual commands on a dry run."""
    console = console or Console(settings.secrets())
    when = datetime.now()
    label = pins.check_label(request.label)
    plan = _Plan(request, when, label, pins.parse_keep(request.keep, when.date()) if request.keep else None)
    if request.dry_run:
        target = settings.backup_dir / catalog.backup_name(
            settings.backup_prefix, settings.env, when, request.fmt, label=label
        )
        return manual.backup_commands(settings, request.fmt, target, request.no_owner, request.no_acl)

    entry = Entry(request.task, settings.env, settings.db_name, settings.db_container)
    with recorded(settings.worklog_path, entry, console.redact), exclusive_lock(
        settings.backup_dir, settings.db_container, settings.db_name, request.task
    ):
        pg = Postgres(Container.find(settings.db_container), settings)
        return _backup_locked(settings, pg, plan, console, entry)


def _backup_locked(settings: Settings, pg: Postgres, plan: _Plan, console: Console,
                   entry: Entry) -> BackupResult:
    fmt, no_owner, no_acl = plan.request.fmt, plan.request.no_owner, plan.request.no_acl
    when, label, keep_until = plan.when, plan.label, plan.keep_until
    if fmt == "custom" and no_owner:
        console.warn(
            "カスタム形式では pg_dump の --no-owner は効かず、リストア時に適用されます"
            "（マニフェストに記録し、restore-* が既定で --no-owner を使います）"
        )
    console.step(f"接続確認: {settings.describe()}")
    tables: list[TableCount] = []
    session: SnapshotSession | None = None
    snapshot_argv: list[str] = []
    # the server's version picks the default compression (a dump runs only with a
    # pg_dump of the server's major or newer): read with the snapshot, or asked
    # beside the table list
    if settings.row_counts:
        console.step("pg_dump とスナップショットを共有し、同じ時点の行数を記録")
        # the identity: asked by the same session, no round trip of its own
        session, snapshot = SnapshotSession.opened(pg, also=drift.IDENTITY_QUERY)
        snapshot_argv = [f"--snapshot={snapshot}"]
        server_version = session.server_version
        try:
            compression = _compression(settings, fmt, server_version)
        except BaseException:
            session.abort()
            raise
    else:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="server-version") as pool:
            version = pool.submit(pg.server_version)
            tables = [TableCount(schema, name, -1) for schema, name in pg.user_tables()]
            server_version = version.result().split()[0]
            compression = _compression(settings, fmt, server_version)
    statistics = _statistics(fmt, server_version)

    identity: dict[str, Any] = {}  # the database's identity, from the session or asked after the dump
    previous = drift.baseline(settings, fmt)  # the previous good backup, before ours exists
    ensure_private_dir(settings.backup_dir)
    final = catalog.free_name(
        settings.backup_dir, settings.backup_prefix, settings.env, when, fmt, label
    )
    entry.file = str(final)
    started_at = now_iso()
    started = time.monotonic()

    row_counts = "exact-same-snapshot" if settings.row_counts else "none"

    toc = TocBeside(pg) if fmt == "custom" else None

    def finished(ok: bool) -> None:
        nonlocal row_counts
        if toc is not None:
            toc.close()
        if session is None:
            return
        if not ok:
            session.abort()
            return
        try:
            tables[:] = session.counts()
            answer = session.also_answer()
            identity.update(json.loads(answer) if answer else {})
        except RunbookError as error:
            # a complete dump is worth more than its row counts
            console.warn(f"行数を数えられませんでした（{error.message}）。マニフェストには行数なしで記録します")
            row_counts = "none"
            tables[:] = [TableCount(schema, name, -1) for schema, name in pg.user_tables()]

    check = _DumpCheck(settings, pg, fmt, tables, console, toc)

    def describe(stream: _Stream, checks: dict[str, Any]) -> dict[str, Any]:
        server_version, pg_dump_version = dump_versions(stream.head, fmt)
        if not identity:
            identity.update(drift.database_identity(pg))
        return {
            "kind": "pgrunbook-backup",
            "manifest_version": 1,
            "kit_version": __version__,
            "env": settings.env,
            "container": settings.db_container,
            "database": settings.db_name,
            "user": settings.db_user,
            "file": final.name,
            "format": fmt,
            "compression": compression.spec if compression else "none",
            "compression_chosen_by": compression.chosen_by if compression else "",
            "statistics": bool(statistics),  # the planner's statistics travel in the archive
            "options": {"no_owner": no_owner, "no_acl": no_acl},
            "size": stream.size,
            "sha256": stream.hash.hexdigest(),
            "server_version": server_version,
            "pg_dump_version": pg_dump_version,
            "started_at": started_at,
            "finished_at": now_iso(),
            "duration_seconds": round(time.monotonic() - started, 3),
            "operator": operator(),
            "host": socket.gethostname(),
            "row_counts": row_counts,
            "tables": [t.as_dict() for t in tables],
            **checks,
            "label": label,
            "keep_until": keep_until.isoformat() if keep_until else None,
            "identity": identity,
            **_drift_fields(previous, [t.as_dict() for t in tables], identity, settings),
        }

    console.step(f"pg_dump -F {'c' if fmt == 'custom' else 'p'} → {final.name}{catalog.PARTIAL_SUFFIX}")
    argv = manual.dump_argv(settings, fmt, no_owner, no_acl,
                            compression.spec if compression else None) + statistics + snapshot_argv
    stream, manifest = write_dump(pg, settings, DumpJob(
        argv, final, "pg_dump", check, describe,
        on_first_data=session.release if session else None, finished=finished,
        also_to=toc.feed if toc else None,
    ), console)
    sha256 = stream.hash.hexdigest()
    entry.sha256 = sha256
    entry.details["size"] = stream.size
    if keep_until:
        entry.details.update(label=label, keep_until=keep_until.isoformat())
    if manifest["suspect"]:
        _warn_suspect(settings, final, manifest, console, entry)
    done = "バックアップ完了（要確認: 疑わしい内容）" if manifest["suspect"] else "バックアップ完了"
    console.summary(
        f"{done}: {final} ({human_size(stream.size)}, sha256 {sha256[:12]}…, "
        f"{manifest['duration_seconds']:.1f} 秒)"
    )
    return BackupResult(final, stream.size, sha256, manifest)


def _drift_fields(previous: tuple[str, dict[str, Any]] | None, tables: list[dict[str, Any]],
                  identity: dict[str, Any], settings: Settings) -> dict[str, Any]:
    block = drift.assess(previous, tables, identity, drift.Thresholds.from_settings(settings),
                         lambda: drift.replaced_since(settings, previous[1]) if previous else None)
    return {"suspect": block["status"] == "suspect", "drift": block}


def _warn_suspect(settings: Settings, final: Path, manifest: dict[str, Any], console: Console,
                  entry: Entry) -> None:
    """The backup is kept, but says loudly that its content looks wrong (issue 12)."""
    reasons = drift.describe(manifest["drift"]["findings"])
    entry.outcome = "suspect"
    entry.details["suspect_reasons"] = reasons
    entry.details["compared_with"] = manifest["drift"]["compared_with"]
    console.warn(f"このバックアップは疑わしい内容です（前回の正常なバックアップ "
                 f"{manifest['drift']['compared_with']} と比較）:")
    for reason in reasons:
        console.warn(f"  - {reason}")
    console.warn(
        "バックアップは残しましたが、保持期間の計算には数えません。DB の状態（コンテナ・DB_NAME・"
        f"データ）を確認し、意図した変化なら invoke accept-drift --env={settings.env} "
        f"--file={final.name} --reason='理由' で承認"
    )


def _compression(settings: Settings, fmt: str, server_version: str) -> versions.Compression | None:
    """The -Z of a custom dump (None for a plain one)."""
    if fmt != "custom":
        return None
    return versions.dump_compression(settings.dump_compression, server_version)


def _statistics(fmt: str, server_version: str) -> list[str]:
    """A custom dump carries the planner's statistics where pg_dump can (18+): the
    restored database then plans as the live one did without an ANALYZE first."""
    return versions.dump_statistics(major_version(server_version)) if fmt == "custom" else []


@dataclass(frozen=True)
class DumpJob:
    """One tool's output made into a backup file: ``argv`` (pg_dump, pg_dumpall) streams into
    ``<final>.partial``; ``check`` inspects the finished partial file (raises RunbookError)
    and returns facts for the manifest; ``describe`` builds the manifest; ``on_first_data``
    is called when the tool's first bytes arrive; ``finished(ok)`` right after it ends (also
    when the run raised), before any check."""

    argv: list[str]
    final: Path
    tool: str
    check: Callable[[Path, _Stream], dict[str, Any]]
    describe: Callable[[_Stream, dict[str, Any]], dict[str, Any]]
    on_first_data: Callable[[], None] | None = None
    finished: Callable[[bool], None] | None = None
    also_to: Callable[[bytes], None] | None = None  # the tool's bytes, as they arrive (TocBeside)


def write_dump(pg: Postgres, settings: Settings, job: DumpJob,
               console: Console) -> tuple[_Stream, dict[str, Any]]:
    """Stream the job's output into ``<final>.partial``, check, fsync, write the sidecars,
    then link to ``final`` (never over an existing file). Any failure leaves nothing."""
    argv, final, tool, check, describe = job.argv, job.final, job.tool, job.check, job.describe
    on_first_data, finished = job.on_first_data, job.finished
    partial = final.with_name(final.name + catalog.PARTIAL_SUFFIX)
    with host_writes(final.parent, settings.env):
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    committed = False
    try:
        stream = _Stream(fd, console, on_first_data, job.also_to)

        def on_host() -> contextlib.AbstractContextManager[None]:
            return host_writes(final.parent, settings.env, lambda: stream.size)

        result = None
        application = f"pgrunbook-{uuid.uuid4().hex[:12]}"
        try:
            # framed (framing.py): a start or an end of the stream that the engine
            # lost takes a mark with it, so a cut archive is never kept
            result = pg.run(argv, on_stdout=stream, environment={"PGAPPNAME": application}, framed=True)
        except _HostWriteFailed as failure:
            console.clear_progress()
            raise host_write_error(failure.error, final.parent, settings.env, stream.size) from None
        finally:
            if result is None:
                # interrupted: the engine does not stop an exec whose client left, so
                # end our dump's session (it would hold its locks and snapshot for hours)
                with contextlib.suppress(Exception):
                    pg.end_sessions_of(application)
            if finished is not None:
                finished(result is not None and result.ok)
        console.clear_progress()
        if not result.ok:
            raise _dump_failure(result.exit_code, result.stderr, settings, tool)
        if not result.complete:
            raise RunbookError(
                f"{tool} の出力が途中で失われました（{human_size(stream.size)} 受信、終了コード 0。"
                "Docker Engine が出力を落とす既知の不具合）。作成途中のファイルは削除しました",
                "ホストの負荷が下がってから再実行")
        for line in result.stderr.splitlines():
            if line.strip():
                console.warn(f"{tool}: {line.strip()}")
        with on_host():
            os.fsync(fd)
            closing, fd = fd, -1
            os.close(closing)
        checks = check(partial, stream)
        manifest = describe(stream, checks)
        sha256 = stream.hash.hexdigest()
        with on_host():
            catalog.write_checksum(final, sha256)
            catalog.write_manifest(final, manifest)
        with on_host():
            try:
                os.link(partial, final)  # the commit point; fails rather than overwrite
            except FileExistsError:
                raise RunbookError(
                    f"{final.name} が既に存在します（上書きはしません）", "時間をおいて再実行"
                ) from None
        committed = True
        with on_host():
            fsync_directory(final.parent)
    finally:
        if fd >= 0:
            os.close(fd)
        partial.unlink(missing_ok=True)
        if not committed:
            for sidecar in (".sha256", ".json"):
                final.with_name(final.name + sidecar).unlink(missing_ok=True)
    return stream, manifest


def dump_versions(head: bytes, fmt: str) -> tuple[str, str]:
    """Server and pg_dump versions, read from the dump itself (no extra round trip)."""
    if fmt == "custom":
        try:
            header = parse_header(head)
        except ArchiveError:
            return "", ""
        return header.server_version, header.pg_dump_version
    text = head.decode("utf-8", "replace")
    server = re.search(r"^-- Dumped from database version (.+)$", text, re.MULTILINE)
    dumper = re.search(r"^-- Dumped by pg_dump version (.+)$", text, re.MULTILINE)
    return (server.group(1).strip() if server else "", dumper.group(1).strip() if dumper else "")


def _dump_failure(
    exit_code: int, stderr: str, settings: Settings, tool: str = "pg_dump"
) -> RunbookError:
    if stderr.strip():
        error = explain_failure(stderr, settings)
        error.message = f"{tool} が失敗しました（終了コード {exit_code}）: {error.message}"
        return error
    return RunbookError(
        f"{tool} が終了コード {exit_code} で終わりました（途中で停止された可能性）",
        "コンテナのログ（docker logs）とディスク容量を確認して再実行",
    )


@dataclass(frozen=True)
class _DumpCheck:
    """What a finished pg_dump is checked against: the settings' minimum size, the format,
    the database's tables (filled in place once the dump ends) and how to read the TOC."""

    settings: Settings
    pg: Postgres
    fmt: str
    tables: list[TableCount]
    console: Console
    toc: TocBeside | None = None

    def __call__(self, partial: Path, stream: _Stream) -> dict[str, Any]:
        """Raises RunbookError unless the dump is whole; returns facts for the manifest."""
        settings, pg, fmt, tables, console, toc = (
            self.settings, self.pg, self.fmt, self.tables, self.console, self.toc)
        if stream.size == 0:
            raise RunbookError("pg_dump の出力が空でした", "DB_NAME と権限を確認して再実行")
        if stream.size < settings.min_backup_bytes:
            raise RunbookError(
                f"バックアップが {stream.size} バイトしかありません（MIN_BACKUP_BYTES="
                f"{settings.min_backup_bytes}）",
                "対象 DB が正しいか確認",
            )
        if fmt == "custom":
            if not stream.head.startswith(MAGIC):
                raise RunbookError("出力がカスタム形式のアーカイブではありません（PGDMP ヘッダなし）")
            console.step("pg_restore --list で目次を確認")
            entries = toc.entries(partial) if toc else toc_entries(pg, partial)
            data_entries = table_data_count(entries)
            if tables and data_entries == 0:
                raise RunbookError(
                    "アーカイブにテーブルデータがありません（DB にはテーブルがあります）",
                    "DB_USER の権限を確認して再実行",
                )
            return {"toc_entries": len(entries), "table_data_entries": data_entries}
        text_head = stream.head.decode("utf-8", "replace")
        if SQL_HEAD not in text_head:
            raise RunbookError("出力が pg_dump の SQL ではありません")
        with open(partial, "rb") as handle:
            handle.seek(max(0, stream.size - 4096))
            tail = handle.read().decode("utf-8", "replace")
        if not sql_tail_is_complete(tail):
            raise RunbookError(
                "SQL の末尾に pg_dump の完了コメントがありません（途中で切れています）",
                "再実行",
            )
        return {}
