"""Is a backup really usable? The runbook's 空ファイル check, and more.

Checks, in order: the file exists and is not partial; its name belongs to
this env; its size is above the minimum; its content matches its format;
the sha256 matches the sidecar; the manifest belongs to this env and
describes this file; the TOC is readable and holds table data; the whole
archive reads to the end (a truncated or corrupt file fails here).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import HashingReader, file_chunks
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.archive import (
    GLOBALS_COMPLETE,
    MAGIC,
    SQL_COMPLETE,
    ArchiveError,
    ArchiveHeader,
    major_version,
    parse_header,
    read_header,
    read_sql_tail,
    sql_head_is_dump,
    sql_head_is_globals,
    sql_tail_is_complete,
)
from pgrunbook.infra.container import ExecResult
from pgrunbook.infra.postgres import Postgres, tool_version_of
from pgrunbook.store import catalog
from pgrunbook.store.select import resolve_file


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    # a sidecar that is not there: said after any failure of the file itself (a
    # truncated copy without its sidecars is truncated before it is "without .sha256")
    missing_sidecar: bool = False


@dataclass
class VerifyReport:
    path: Path
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sha256: str | None = None
    format: str | None = None
    toc: tuple[str, ...] | None = None  # the archive's pg_restore --list (no comments), once read

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        """The failed checks in order, a missing sidecar after the file's own failures."""
        failed = [check for check in self.checks if not check.ok]
        return sorted(failed, key=lambda check: check.missing_sidecar)

    @property
    def sidecar_missing(self) -> bool:
        return any(check.missing_sidecar for check in self.checks)

    def add(self, name: str, ok: bool, detail: str, hint: str = "", missing_sidecar: bool = False) -> bool:
        self.checks.append(Check(name, ok, detail, hint, missing_sidecar))
        return ok


class _Tools:
    """pg_restore in the DB container, else on the host (for a dead server). ``host_first``:
    the host's pg_restore when there is one (a key drill does what a clean host does)."""

    def __init__(self, settings: Settings, console: Console, host_first: bool = False) -> None:
        self.settings = settings
        self.console = console
        self.host_first = host_first
        self._pg: Postgres | None = None
        self._host = False

    def _resolve(self) -> None:
        if self._pg or self._host:
            return
        if self.host_first and shutil.which("pg_restore"):
            self._host = True
            return
        try:
            self._pg = Postgres(discovery.db_container(self.settings), self.settings)
        except RunbookError as error:
            if shutil.which("pg_restore"):
                self.console.warn(f"{error.message}: ホストの pg_restore で検証します")
                self._host = True
            else:
                raise

    def pg_restore_version(self) -> str:
        """The version of the pg_restore that ``run`` uses ("" when it cannot tell)."""
        self._resolve()
        try:
            if self._pg:
                return self._pg.tool_version("pg_restore")
            done = subprocess.run(["pg_restore", "--version"], capture_output=True, text=True, check=False)
            return tool_version_of(done.stdout) if done.returncode == 0 and done.stdout.strip() else ""
        except RunbookError:
            return ""

    def run(self, argv: list[str], path: Path, digest: HashingReader | None = None) -> ExecResult:
        """``digest`` hashes the bytes sent to the container (on the host fallback
        it reads the file by itself later). Without it the output is read: framed
        and asked again when the engine lost it (framing.py)."""
        self._resolve()
        if self._pg and digest is None:
            return self._pg.read(argv, stdin=lambda: file_chunks(path))
        if self._pg:
            return self._pg.run(argv, stdin=digest.chunks())
        with open(path, "rb") as handle:
            done = subprocess.run(argv, stdin=handle, capture_output=True, check=False)
        return ExecResult(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


def verify_backup(
    settings: Settings, file: str | None = None, console: Console | None = None
) -> VerifyReport:
    console = console or Console(settings.secrets())
    path = resolve_file(settings, file, console, newest=True)
    entry = Entry("verify", settings.env, settings.db_name, settings.db_container, file=str(path))
    with recorded(settings.worklog_path, entry, console.redact):
        report = check_file(settings, path, console, expected_env=settings.env)
        entry.sha256 = report.sha256
        for warning in report.warnings:
            console.warn(warning)
        for check in report.checks:
            console.step(f"{'OK' if check.ok else 'NG'}  {check.name}: {check.detail}")
        if not report.ok:
            for check in report.failures[1:]:
                console.summary(f"NG {check.name}: {check.detail}")
            first = report.failures[0]
            raise RunbookError(
                f"検証失敗 [{first.name}] {path.name}: {first.detail}",
                first.hint or "このファイルは使わず、バックアップを取り直す",
            )
        console.summary(f"検証 OK: {path} ({len(report.checks)} 項目)")
        return report


def check_file(
    settings: Settings,
    path: Path,
    console: Console,
    expected_env: str | None,
    full_read: bool = True,
    checksum: bool = True,
) -> VerifyReport:
    """All file checks. expected_env=None skips the env checks (cross-env restores
    make their own decision); full_read=False skips reading the whole archive
    (a restore reads it anyway); checksum=False leaves the sha256 comparison to a
    caller that hashes the file while it sends it anyway (restore)."""
    report = VerifyReport(path)
    if path.name.endswith(catalog.PARTIAL_SUFFIX) or not path.is_file():
        report.add("file", False, "作成途中（.partial）か通常のファイルではありません",
                   "完成したバックアップ（.dump / .sql）を指定")
        return report
    backup = catalog.parse(path)
    manifest = catalog.read_manifest(path)
    if backup is None:
        report.warnings.append(f"{path.name} は命名規則外です（環境をファイル名から確認できません）")
    elif expected_env is not None and backup.env != expected_env:
        report.add("env", False, f"ファイル名の環境は {backup.env}、指定は --env={expected_env}",
                   f"--env={backup.env} で検証するか、正しいファイルを指定")
    elif backup.legacy:
        report.warnings.append(
            f"{path.name} は旧形式の名前です（チェックサム・マニフェストなしの手作業バックアップとして検証）"
        )

    size = path.stat().st_size
    if not report.add(
        "size", size >= settings.min_backup_bytes,
        f"{human_size(size)} ({size} バイト、最小 {settings.min_backup_bytes})",
        "空または極端に小さいファイルです。バックアップを取り直す",
    ):
        return report

    fmt = _content_format(path)
    expected = backup.format if backup else ("custom" if path.suffix == ".dump" else "plain")
    report.format = fmt
    if not report.add("format", fmt == expected, f"内容は {fmt or '不明'}（拡張子からは {expected}）",
                      "pg_dump の出力ではないか、拡張子が違います"):
        return report

    # A custom archive read to the end anyway is hashed on that same read (one
    # read of a large file, not two); its sidecar checks keep their place in the report.
    digest = HashingReader(path) if checksum and fmt == "custom" and full_read else None
    sidecars_at = len(report.checks)
    if digest is None:
        report.sha256 = HashingReader(path).hexdigest() if checksum else None
        _check_sidecars(settings, report, backup, manifest, size, expected_env)

    if fmt == "custom":
        # refused for a missing sidecar anyway: read it through, so that a truncated copy says so
        full_read = full_read or report.sidecar_missing
        _check_archive(_Tools(settings, console), report, manifest, full_read, digest)
        if digest is not None:
            report.sha256 = digest.hexdigest()
            archive_checks = report.checks[sidecars_at:]
            del report.checks[sidecars_at:]
            _check_sidecars(settings, report, backup, manifest, size, expected_env)
            report.checks += archive_checks
    else:
        marker = GLOBALS_COMPLETE if fmt == catalog.GLOBALS else SQL_COMPLETE
        complete = sql_tail_is_complete(read_sql_tail(path), marker)
        report.add("complete", complete,
                   "末尾に完了コメントあり" if complete else "末尾に pg_dump の完了コメントがありません",
                   "途中で切れた SQL です。バックアップを取り直す")
    return report


def _content_format(path: Path) -> str | None:
    with open(path, "rb") as handle:
        head = handle.read(len(MAGIC))
    if head == MAGIC:
        return "custom"
    if sql_head_is_dump(path):
        return "plain"
    if sql_head_is_globals(path):
        return catalog.GLOBALS
    return None


def _check_sidecars(
    settings: Settings,
    report: VerifyReport,
    backup: catalog.BackupFile | None,
    manifest: dict[str, Any] | None,
    size: int,
    expected_env: str | None,
) -> None:
    path = report.path
    made_by_kit = backup is not None and not backup.legacy
    expected = catalog.read_checksum(path)
    if expected is None:
        if made_by_kit:
            report.add("sha256", False, f"{path.name}.sha256 がありません",
                       "バックアップ一式（.sha256 と .json）をそろえて置く", missing_sidecar=True)
        else:
            report.warnings.append("チェックサム（.sha256）がないため改ざん・破損の照合はできません")
    elif report.sha256 is not None:
        report.add("sha256", expected == report.sha256,
                   "一致" if expected == report.sha256 else
                   f"不一致（記録 {expected[:12]}…、実際 {report.sha256[:12]}…）" if report.sha256
                   else "計算できません",
                   "ファイルが壊れているか差し替えられています。使わずに別のバックアップを使う")
    if manifest is None:
        if made_by_kit:
            report.add("manifest", False, f"{path.name}.json がありません",
                       "バックアップ一式（.sha256 と .json）をそろえて置く", missing_sidecar=True)
        return
    problems, hint = [], ""
    if expected_env is not None and manifest.get("env") != expected_env:
        problems.append(f"マニフェストの環境は {manifest.get('env')}、指定は --env={expected_env}")
        hint = "別環境のファイルです。正しい --env かファイルを指定"
    if manifest.get("size") not in (None, size):
        problems.append(f"サイズ {size} が記録 {manifest.get('size')} と違います")
        hint = hint or "途中で切れたか差し替えられたファイルです。別のバックアップを使う"
    if report.sha256 is not None and manifest.get("sha256") not in (None, report.sha256):
        problems.append("sha256 が記録と違います")
        hint = hint or "壊れたか差し替えられたファイルです。別のバックアップを使う"
    report.add("manifest", not problems, "; ".join(problems) or
               f"env={manifest.get('env')} database={manifest.get('database')}", hint)
    if expected_env and manifest.get("database") and manifest.get("database") != settings.db_name:
        report.warnings.append(
            f"マニフェストの DB は {manifest.get('database')}（設定は {settings.db_name}）"
        )


def _check_archive(
    tools: _Tools,
    report: VerifyReport,
    manifest: dict[str, Any] | None,
    full_read: bool,
    digest: HashingReader | None = None,
) -> None:
    """The custom archive at ``report.path``: header, TOC, table data and (``full_read``)
    one read to the end with ``tools`` (hashed on the way when ``digest`` is given)."""
    path, console = report.path, tools.console
    try:
        with open(path, "rb") as handle:
            header = parse_header(handle.read(8192))
    except ArchiveError as error:
        report.add("header", False, f"ヘッダを読めません: {error}", "壊れたファイルです")
        return
    report.add("header", True,
               f"archive {'.'.join(map(str, header.version))}, db={header.database}, "
               f"pg_dump {header.pg_dump_version}")
    toc = _read_toc(tools, path, header)
    report.toc = toc.entries if toc.ok else None
    if not report.add("toc", toc.ok, toc.detail, toc.hint):
        return
    expected_tables = len(manifest.get("tables", [])) if manifest else toc.tables
    report.add("table-data", toc.data > 0 or expected_tables == 0,
               f"TABLE DATA {toc.data} 件（テーブル {expected_tables}）",
               "データのないアーカイブです（スキーマのみ？）。バックアップを取り直す")
    if not full_read:
        return
    console.step("アーカイブ全体を読み通して確認（pg_restore -f /dev/null）")
    full = tools.run(["pg_restore", "-f", "/dev/null"], path, digest)
    report.add("readable", full.ok,
               "最後まで読めました" if full.ok else f"途中で読めなくなります: {full.error_text()}",
               "途中で切れているか壊れています。別のバックアップを使う")


@dataclass(frozen=True)
class Toc:
    """What ``pg_restore --list`` made of an archive."""

    ok: bool
    detail: str
    hint: str = ""
    data: int = 0  # TABLE DATA entries
    tables: int = 0  # TABLE entries
    too_new: bool = False  # made by a newer pg_dump than this pg_restore reads
    entries: tuple[str, ...] = ()  # its lines, without pg_restore's comments


def _read_toc(tools: _Tools, path: Path, header: ArchiveHeader) -> Toc:
    listing = tools.run(["pg_restore", "--list"], path)
    if not listing.ok and "unsupported version" in listing.stderr:
        # a good file from a newer PostgreSQL: say so, or it gets thrown away as broken
        made_by = header.pg_dump_version
        newer = f"PostgreSQL {major_version(made_by)} 以上" if made_by else "より新しい PostgreSQL"
        reader = tools.pg_restore_version()
        return Toc(False, f"{'pg_dump ' + made_by if made_by else '新しい pg_dump'} で作られた形式 "
                          f"{'.'.join(map(str, header.version))} のファイルで、"
                          f"{'pg_restore ' + reader if reader else 'この pg_restore'} では読めません",
                   f"ファイルは壊れていないかもしれません。{newer}のコンテナ"
                   "（またはホストの同じ版の pg_restore）で扱う", too_new=True)
    if not listing.ok:
        return Toc(False, f"目次を読めません: {listing.error_text()}",
                   "壊れたファイルです。別のバックアップを使う")
    entries = [line for line in listing.stdout.decode("utf-8", "replace").splitlines()
               if line and not line.startswith(";")]
    data = sum(1 for line in entries if " TABLE DATA " in line)
    tables = sum(1 for line in entries if " TABLE " in line and " TABLE DATA " not in line)
    return Toc(True, "目次を読めました", data=data, tables=tables, entries=tuple(entries))


def table_of_contents(settings: Settings, path: Path, console: Console, host_first: bool = True) -> Toc:
    """The table of contents of a custom-format archive (``key-drill``): the host's
    pg_restore when there is one (``host_first``), else (or when the host's is older than
    the archive) the DB container's."""
    try:
        header = read_header(path)
    except ArchiveError as error:
        return Toc(False, f"ヘッダを読めません: {error}", "壊れたファイルです。別のバックアップを使う")
    toc = _read_toc(_Tools(settings, console, host_first), path, header)
    if host_first and toc.too_new:
        try:
            return _read_toc(_Tools(settings, console), path, header)
        except RunbookError:
            return toc
    return toc


def summarize(checks: Iterable[Check]) -> str:
    return ", ".join(f"{c.name}={'ok' if c.ok else 'NG'}" for c in checks)
