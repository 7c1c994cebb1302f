"""Restores that are safer than the hand procedure.

The runbook's procedure A drops the live database first and restores after:
a bad archive then leaves nothing. Here every restore goes into a database of
its own first (scratch, staging or verify), is checked, and only a replace
then swaps names in one transaction, keeping the previous database.

Databases the kit creates carry a comment ``pgrunbook:<role>:...``; only
those can be listed, replaced or dropped by the kit. The live database is
never dropped by any code path.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from pgrunbook import catalog
from pgrunbook.archive import ArchiveHeader, major_version, read_header
from pgrunbook.backup import file_chunks
from pgrunbook.console import Console, human_size
from pgrunbook.container import Container, ExecResult, engine
from pgrunbook.errors import Refused, RunbookError
from pgrunbook.postgres import (
    EXACT_ROWS,
    USER_TABLES_FROM,
    DatabaseFacts,
    Postgres,
    ServerFacts,
    TableCount,
    explain_failure,
    quote_ident,
    quote_literal,
)
from pgrunbook.safety import exclusive_lock
from pgrunbook.settings import Settings, load_settings
from pgrunbook.verify import Digest, check_file, resolve_file
from pgrunbook.worklog import Entry, now_iso, operator, recorded

MARK = "pgrunbook"
ROLES = ("scratch", "staging", "previous", "verify", "rolledback")
MAX_NAME = 63


# ---- what we know of the file --------------------------------------------------
@dataclass(frozen=True)
class Source:
    path: Path
    format: str
    env: str | None
    manifest: dict[str, Any] | None
    header: ArchiveHeader | None
    size: int
    expected_sha256: str | None  # from the .sha256 sidecar, else the manifest

    @property
    def created(self) -> str:
        if self.manifest and self.manifest.get("started_at"):
            return str(self.manifest["started_at"])
        parsed = catalog.parse(self.path)
        return parsed.created.isoformat(sep=" ") if parsed else "不明"

    def table_counts(self) -> dict[str, int] | None:
        if not self.manifest or self.manifest.get("row_counts") in (None, "none"):
            return None
        return {f"{t['schema']}.{t['name']}": int(t["rows"]) for t in self.manifest.get("tables", [])}


def inspect_source(settings: Settings, file: str | None, console: Console) -> Source:
    """Check the file (no env decision here) and describe it."""
    path = resolve_file(settings, file)
    # The sha256 is computed while the file is sent to the container (one read,
    # not two) and compared before anything is swapped: see restore_into.
    report = check_file(settings, path, console, expected_env=None, full_read=False, checksum=False)
    for warning in report.warnings:
        console.warn(warning)
    if not report.ok:
        first = report.failures[0]
        raise RunbookError(f"{path.name} は使えません [{first.name}]: {first.detail}", first.hint)
    if report.format == catalog.GLOBALS:
        raise Refused(
            f"{path.name} はロール（pg_dumpall --globals-only）のファイルで、DB のバックアップではありません",
            "ロールは新しいサーバーで psql -d postgres -f に流してから DB を戻す（手順書「運用」参照）",
        )
    parsed = catalog.parse(path)
    manifest = catalog.read_manifest(path)
    env = (manifest or {}).get("env") or (parsed.env if parsed else None)
    header = read_header(path) if report.format == "custom" else None
    expected = catalog.read_checksum(path)
    expected = expected or (manifest or {}).get("sha256")
    return Source(path, report.format or "custom", env, manifest, header, path.stat().st_size,
                  expected)


First = TypeVar("First")
Second = TypeVar("Second")


def side_by_side(first: Callable[[], First], second: Callable[[], Second]) -> tuple[First, Second]:
    """Two independent round trips to the container at once (each costs ~50 ms).
    ``first``'s error wins; ``second`` is always waited for."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="beside") as pool:
        pending = pool.submit(second)
        try:
            result = first()
        except BaseException:
            with contextlib.suppress(Exception):
                pending.result()
            raise
        return result, pending.result()


def inspect_with_facts(
    pg: Postgres, settings: Settings, file: str | None, console: Console
) -> tuple[Source, ServerFacts]:
    """The file's checks (a ``pg_restore --list`` in the container) beside the
    server's facts."""
    return side_by_side(lambda: inspect_source(settings, file, console),
                        lambda: pg.facts(settings.db_name))


def check_digest(source: Source, digest: str) -> None:
    if source.expected_sha256 and source.expected_sha256 != digest:
        raise RunbookError(
            f"{source.path.name} の sha256 が記録と一致しません（記録 {source.expected_sha256[:12]}…、"
            f"実際 {digest[:12]}…）",
            "ファイルが壊れているか差し替えられています。別のバックアップを使う",
        )


# ---- guards -------------------------------------------------------------------------
def check_versions(source: Source, server_version: str) -> None:
    """Refuse an archive from a newer pg_dump than the server: its SQL is not
    guaranteed to load into an older PostgreSQL. (That the container's
    pg_restore can read the archive at all, ``pg_restore --list`` has shown.)"""
    if source.format == "custom":
        made_by = source.header.pg_dump_version if source.header else ""
    else:
        with open(source.path, "rb") as handle:
            head = handle.read(2048).decode("utf-8", "replace")
        match = re.search(r"Dumped by pg_dump version (\S+)", head)
        made_by = match.group(1) if match else ""
    if not made_by:
        return
    if major_version(made_by) > major_version(server_version):
        raise Refused(
            f"{source.path.name} は pg_dump {made_by} で作られており、コンテナの PostgreSQL "
            f"{server_version} には戻せません（古い版のサーバーへの復元は保証されません）",
            f"PostgreSQL {major_version(made_by)} 以上のコンテナに戻す",
        )


def source_is_protected(settings: Settings, source_env: str) -> bool:
    if source_env == settings.env:
        return settings.protected
    try:
        return load_settings(source_env, settings.config_dir, check_siblings=False).protected
    except RunbookError:
        return source_env == "prod"


def brings_personal_data(settings: Settings, source: Source) -> bool:
    """Data of a protected env (prod) coming into a non-protected one."""
    return bool(
        source.env and source.env != settings.env and not settings.protected
        and source_is_protected(settings, source.env)
    )


def guard_environment(
    settings: Settings, source: Source, approved_by: str | None, console: Console
) -> bool:
    """The runbook's env rules for a replace. Returns True when personal data is
    coming into a non-protected env (masking applies)."""
    if source.env != settings.env and settings.protected:
        origin = source.env or "不明"
        if not approved_by:
            raise Refused(
                f"環境 {origin} のバックアップを保護環境 {settings.env} に戻すことは原則禁止です",
                "事前に承認を取り、--approved-by=<承認者名> を付けて再実行（承認者は作業ログに残ります）",
            )
        console.warn(f"{origin} → {settings.env} のリストアを {approved_by} の承認で実行します")
    return warn_personal_data(settings, source, console)


def warn_personal_data(settings: Settings, source: Source, console: Console) -> bool:
    if not brings_personal_data(settings, source):
        return False
    console.warn(
        f"{source.env} のデータ（個人情報を含む可能性）を {settings.env} に戻します。"
        "取り扱いに注意し、不要になったら削除してください"
    )
    return True


def ask_on_stderr(prompt: str) -> str:
    """Like input(), but the prompt goes to stderr: stdout carries results only."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline()


def confirm(
    settings: Settings,
    source: Source,
    confirm_env: str | None,
    action: str,
    console: Console,
    ask: Callable[[str], str] | None = None,
    interactive: bool | None = None,
    engine: str = "",
) -> None:
    """The runbook's 声に出して確認 / 二重確認, or --confirm=<env> without a terminal."""
    interactive = sys.stdin.isatty() if interactive is None else interactive
    banner = [
        "=" * 64,
        f"  {action}",
        f"  環境       : {settings.env}{'（保護環境）' if settings.protected else ''}",
        f"  コンテナ   : {settings.db_container}",
        *([f"  Docker     : {engine}"] if engine else []),
        f"  データベース: {settings.db_name}",
        f"  ファイル   : {source.path}",
        f"  作成日時   : {source.created}  サイズ: {human_size(source.size)}"
        f"  元の環境: {source.env or '不明'}",
        "=" * 64,
    ]
    if confirm_env is not None:
        if confirm_env != settings.env:
            raise Refused(
                f"--confirm={confirm_env} が対象環境 {settings.env} と一致しません",
                f"対象を確かめ、--confirm={settings.env} で再実行",
            )
        for line in banner:
            console.step(line)
        return
    if not interactive:
        raise Refused(
            "端末がないため確認できません（何も変更していません）",
            f"内容を確かめたうえで --confirm={settings.env} を付けて再実行",
        )
    ask = ask or ask_on_stderr
    for line in banner:
        console.summary(line)
    typed_env = ask(f"対象の環境名を入力してください（{settings.env}）: ").strip()
    if typed_env != settings.env:
        raise Refused(f"環境名が一致しません（入力: {typed_env!r}）。中止しました")
    typed_db = ask("対象のデータベース名をもう一度入力してください: ").strip()
    if typed_db != settings.db_name:
        raise Refused(f"データベース名が一致しません（入力: {typed_db!r}）。中止しました")


# ---- kit-made databases ---------------------------------------------------------
def kit_name(settings: Settings, role: str, when: datetime | None = None) -> str:
    stamp = (when or datetime.now()).strftime("%Y%m%d%H%M%S")
    name = f"{settings.db_name}_{MARK}_{role}_{stamp}"
    if len(name.encode()) > MAX_NAME:
        name = f"{MARK}_{role}_{stamp}_{uuid.uuid4().hex[:6]}"
    return name


def scratch_name(settings: Settings, when: datetime | None = None) -> str:
    """The runbook's own name: <DB_NAME>_restore_<YYYYMMDD>."""
    return f"{settings.db_name}_restore_{(when or datetime.now()).strftime('%Y%m%d')}"


@dataclass(frozen=True)
class KitDatabase:
    name: str
    role: str
    env: str
    created_at: str
    detail: str
    size: int


def mark_text(role: str, settings: Settings, detail: str) -> str:
    return f"{MARK}:{role}:{settings.env}:{now_iso()}:{operator()}:{detail}"


def kit_databases(pg: Postgres) -> list[KitDatabase]:
    rows = pg.query(
        "SELECT datname, shobj_description(oid, 'pg_database'), pg_database_size(oid) "
        "FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE "
        f"{quote_literal(MARK + ':%')} ORDER BY 1",
        "postgres",
    )
    found = []
    for name, comment, size in rows:
        parts = comment.split(":", 5)
        if len(parts) >= 4 and parts[1] in ROLES:
            # created_at holds colons itself: role, env, then "time:operator:detail"
            rest = comment.split(":", 3)[3]
            found.append(KitDatabase(name, parts[1], parts[2], rest[:25], rest, int(size)))
    return found


def _create_database(pg: Postgres, name: str, comment: str, like: DatabaseFacts | None) -> None:
    """Create a kit database (with the live database's encoding and locale when
    there is one), marked by its comment. Unmarked, it is dropped at once."""
    options = ""
    if like:
        options = (f" ENCODING {quote_literal(like.encoding)} LC_COLLATE {quote_literal(like.collate)}"
                   f" LC_CTYPE {quote_literal(like.ctype)}")
    pg.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0{options}", "postgres")
    try:
        pg.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(comment)}", "postgres")
    except BaseException:
        with contextlib.suppress(Exception):
            drop_kit_database(pg, name)
        raise


def _cleanup(step: str, action: Callable[[], object], console: Console) -> str | None:
    """Run a cleanup step; never let its failure hide the original error."""
    try:
        action()
    except Exception as error:  # noqa: BLE001 - reported next to the original error
        message = error.one_line() if isinstance(error, RunbookError) else str(error)
        console.warn(f"後片付けに失敗: {step}: {message}")
        return step
    return None


def drop_kit_database(pg: Postgres, name: str) -> None:
    pg.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)", "postgres")


# ---- the restore itself -------------------------------------------------------------
@dataclass
class RestoreOptions:
    no_owner: bool | None = None  # None: what the backup's manifest asked for
    no_acl: bool = False
    jobs: int | None = None


@contextlib.contextmanager
def _file_in_container(pg: Postgres, source: Source, digest: Digest) -> Iterator[str]:
    """Place the archive inside the container (needed by pg_restore -j) in a
    private directory the same upload creates; removed after (after a success,
    on a thread of its own while the caller goes on; the process waits for it)."""
    private = f"pgrunbook-{uuid.uuid4().hex[:12]}"

    def remove() -> None:
        with contextlib.suppress(Exception):  # never hides the restore's own outcome
            pg.container.run(["rm", "-rf", f"/tmp/{private}"])

    try:
        yield pg.container.put_file(source.path, "/tmp", f"{private}/{source.path.name}",
                                    chunks=digest.chunks())
    except BaseException:
        remove()
        raise
    threading.Thread(target=remove, name="remove-archive").start()


def check_free_space(pg: Postgres, facts: ServerFacts, source: Source, archive_inside: bool) -> None:
    """Refuse a restore the container's disk cannot hold: a full disk would also
    stop the live cluster (its WAL lives there). Skipped when the server does not
    tell where its data lives (no pg_read_all_settings)."""
    data_directory = facts.data_directory
    if not data_directory:
        return
    live = facts.database.size if facts.database else None
    needed_data = live if live is not None else source.size * 5  # no live DB (size): a rough guess
    places = [data_directory] + (["/tmp"] if archive_inside else [])
    try:
        result = pg.container.run(["df", "-Pk", *places])
    except RunbookError:  # no df in the image: the check is skipped, as without privileges
        return
    if not result.ok:
        return
    rows = [line.split() for line in result.stdout.decode().splitlines()[1:] if line.strip()]
    if len(rows) != len(places):
        return
    needs: dict[str, int] = {}
    free: dict[str, int] = {}
    for row, need in zip(rows, [needed_data, source.size][: len(rows)], strict=True):
        filesystem = row[0] + row[-1]
        needs[filesystem] = needs.get(filesystem, 0) + need
        free[filesystem] = int(row[3]) * 1024
    for filesystem, need in needs.items():
        if free[filesystem] < need * 1.1:
            raise RunbookError(
                f"コンテナのディスクの空きが足りません（必要 約 {human_size(need)}、"
                f"空き {human_size(free[filesystem])}）。満杯になると稼働中の DB も止まるため中止しました",
                "不要な DB（invoke restore-list）や古いファイルを消して空きを作る"
                + ("。--jobs=1 ならアーカイブをコンテナに置きません" if archive_inside else ""),
            )


def restore_into(
    pg: Postgres, settings: Settings, source: Source, database: str, options: RestoreOptions,
    console: Console, facts: ServerFacts,
) -> str:
    """Restore the file into an existing empty database; raise on any error.

    Returns the sha256 of the bytes restored (hashed on the way); the caller
    compares it with the record before the result is used."""
    digest = Digest(source.path)
    started = time.monotonic()
    if source.format == "plain":
        check_free_space(pg, facts, source, archive_inside=False)
        console.step(f"psql（ON_ERROR_STOP、単一トランザクション）で {database} に復元")
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                "-U", settings.db_user, "-d", database]
        result = pg.run(argv, stdin=digest.chunks(), on_stdout=lambda _data: None)
    else:
        no_owner = options.no_owner
        if no_owner is None:
            no_owner = bool((source.manifest or {}).get("options", {}).get("no_owner"))
        argv = ["pg_restore", "--exit-on-error", "-U", settings.db_user, "-d", database]
        if no_owner:
            argv.append("--no-owner")
        if options.no_acl:
            argv.append("--no-acl")
        jobs = options.jobs or pg.container.cpu_count()
        check_free_space(pg, facts, source, archive_inside=jobs > 1)
        if jobs > 1:
            with _file_in_container(pg, source, digest) as inside:
                console.step(f"pg_restore -j {jobs} で {database} に復元")
                result = pg.run(argv + ["-j", str(jobs), inside])
        else:
            console.step(f"pg_restore で {database} に復元")
            result = pg.run(argv, stdin=digest.chunks())
    if not result.ok:
        check_digest(source, digest.hexdigest())  # a damaged file: say so, not just "failed"
        text = result.error_text()
        hint = "ファイルが壊れていないか invoke verify で確認"
        if re.search(r'role "[^"]+" does not exist|must be owner|permission denied', result.stderr):
            hint = "役割（ロール）の差による権限エラーです。--no-owner --no-acl を付けて再実行"
        raise RunbookError(f"復元に失敗しました（{database}）: {text}", hint)
    console.step(f"復元完了（{time.monotonic() - started:.1f} 秒）")
    sha256 = digest.hexdigest()
    check_digest(source, sha256)
    return sha256


# ---- checks after a restore (the runbook's 動作確認) ---------------------------------
@dataclass
class DatabaseSummary:
    database: str
    schemas: list[str] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)
    prisma_latest: str | None = None
    prisma_problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        total = sum(self.tables.values())
        lines = [f"{self.database}: スキーマ {len(self.schemas)}（{', '.join(self.schemas)}）、"
                 f"テーブル {len(self.tables)}、行数合計 {total}"]
        lines += [f"  {name}: {rows} 行" for name, rows in sorted(self.tables.items())]
        if self.prisma_latest is not None:
            lines.append(f"  Prisma の最新適用マイグレーション: {self.prisma_latest}")
        lines += [f"  Prisma の要確認マイグレーション: {p}" for p in self.prisma_problems]
        return lines


# A database's schemas and the rows of each ordinary table, in one round trip.
# {rows} is either the live-row count a freshly restored database already knows
# (the cumulative statistics of the restoring sessions; trusted only when it
# equals the expected counts exactly, anything else, a late stats flush or an
# autoanalyze estimate, falls back to count(*)) or the exact count(*) itself.
SUMMARY = """
SELECT 'schema', nspname, '', 0 FROM pg_namespace
WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
UNION ALL
SELECT 'table', n.nspname, c.relname, {rows}""" + USER_TABLES_FROM + "ORDER BY 1, 2, 3"
FRESH_ROWS = "pg_stat_get_live_tuples(c.oid)"


def _summary_rows(pg: Postgres, database: str, rows: str) -> tuple[set[str], list[TableCount]]:
    result = pg.query(SUMMARY.format(rows=rows), database)
    schemas = {row[1] for row in result if row[0] == "schema"}
    counts = [TableCount(row[1], row[2], int(row[3])) for row in result if row[0] == "table"]
    return schemas, counts


def summarize_database(
    pg: Postgres, database: str, expected: dict[str, int] | None = None
) -> DatabaseSummary:
    """Schemas, tables with their rows, Prisma's migration state.

    ``expected`` (a freshly restored database's manifest counts) allows the
    instant statistics path; without it every table is counted."""
    summary = DatabaseSummary(database)
    counts = None
    if expected:
        schemas, fresh = _summary_rows(pg, database, FRESH_ROWS)
        if {f"{c.schema}.{c.name}": c.rows for c in fresh} == expected:
            counts = fresh
    if counts is None:
        schemas, counts = _summary_rows(pg, database, EXACT_ROWS)
    summary.schemas = sorted(schemas | {c.schema for c in counts})
    summary.tables = {f"{c.schema}.{c.name}": c.rows for c in counts}
    prisma = [name for name in summary.tables if name.endswith("._prisma_migrations")]
    if prisma:
        table = ".".join(quote_ident(part) for part in prisma[0].split(".", 1))
        latest = pg.query(
            f"SELECT migration_name FROM {table} WHERE finished_at IS NOT NULL "
            "AND rolled_back_at IS NULL ORDER BY finished_at DESC LIMIT 1", database)
        summary.prisma_latest = latest[0][0] if latest else "（なし）"
        problems = pg.query(
            f"SELECT migration_name, CASE WHEN rolled_back_at IS NOT NULL THEN 'rolled back' "
            f"ELSE 'failed' END FROM {table} WHERE rolled_back_at IS NOT NULL "
            "OR finished_at IS NULL ORDER BY started_at", database)
        summary.prisma_problems = [f"{name}（{state}）" for name, state in problems]
    return summary


def compare_with_manifest(source: Source, summary: DatabaseSummary) -> list[str]:
    expected = source.table_counts()
    if expected is None:
        tables = (source.manifest or {}).get("tables")
        if tables:
            missing = [f"{t['schema']}.{t['name']}" for t in tables
                       if f"{t['schema']}.{t['name']}" not in summary.tables]
            return [f"テーブル {name} がありません" for name in missing]
        return []
    differences = []
    for name, rows in sorted(expected.items()):
        if name not in summary.tables:
            differences.append(f"テーブル {name} がありません")
        elif rows >= 0 and summary.tables[name] != rows:
            differences.append(f"{name}: 行数 {summary.tables[name]}（バックアップ時 {rows}）")
    return differences


# ---- DATABASE_URL and the optional host check -----------------------------------
def database_url(settings: Settings, database: str, masked: bool) -> str:
    base = settings.app_database_url or f"postgresql://{settings.db_user}@localhost:5432/{database}"
    parts = urlsplit(base)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, host = netloc.rsplit("@", 1)
        user, _, password = credentials.partition(":")
    else:
        user, password, host = settings.db_user, "", netloc
    password = password or quote(settings.db_password or "", safe="")
    netloc = f"{user}:{'***' if masked else password}@{host}" if password else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, parts.fragment))


def run_post_restore_command(settings: Settings, database: str, console: Console) -> None:
    if not settings.post_restore_command:
        return
    console.step(f"確認コマンド: {settings.post_restore_command}")
    environment = dict(os.environ, DATABASE_URL=database_url(settings, database, masked=False))
    done = subprocess.run(settings.post_restore_command, shell=True, cwd=settings.config_dir,
                          env=environment, capture_output=True, text=True, check=False)
    output = (done.stdout + done.stderr).strip()
    for line in output.splitlines()[-20:]:
        console.step(f"  {line}")
    if done.returncode != 0:
        raise RunbookError(
            f"確認コマンドが終了コード {done.returncode} で失敗しました: {settings.post_restore_command}",
            "出力を確認（スキーマ状態の不一致など）",
        )


def _apply_masking(pg: Postgres, settings: Settings, database: str, console: Console) -> None:
    if settings.masking_sql is None:
        console.warn(f"MASKING_SQL が未設定のため、{database} の個人情報はそのままです")
        return
    if not settings.masking_sql.is_file():
        raise RunbookError(f"MASKING_SQL のファイル {settings.masking_sql} がありません",
                           f".env.{settings.env} の MASKING_SQL を確認")
    console.step(f"マスキング SQL を適用: {settings.masking_sql.name}")
    result = pg.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                     "-U", settings.db_user, "-d", database],
                    stdin=file_chunks(settings.masking_sql), on_stdout=lambda _d: None)
    if not result.ok:
        raise RunbookError(f"マスキング SQL が失敗しました: {result.error_text()}",
                           "SQL を直してから再実行（置き換えは行っていません）")


# ---- restore-scratch -------------------------------------------------------------------
@dataclass(frozen=True)
class ScratchResult:
    database: str
    url: str
    summary: DatabaseSummary


def restore_scratch(
    settings: Settings,
    file: str | None,
    database: str | None = None,
    replace: bool = False,
    options: RestoreOptions | None = None,
    console: Console | None = None,
) -> ScratchResult:
    console = console or Console(settings.secrets())
    options = options or RestoreOptions()
    entry = Entry("restore-scratch", settings.env, settings.db_name, settings.db_container)
    with recorded(settings.worklog_path, entry, console.redact):
        pg = Postgres(Container.find(settings.db_container), settings)
        source, facts = inspect_with_facts(pg, settings, file, console)
        entry.file = str(source.path)
        target = database or scratch_name(settings)
        _validate_target_name(settings, target)
        entry.details["target"] = target
        entry.details["source_env"] = source.env
        check_versions(source, facts.version)
        personal = warn_personal_data(settings, source, console)
        if pg.database_exists(target):
            mine = {db.name: db for db in kit_databases(pg)
                    if db.env == settings.env and db.role == "scratch"}
            if not replace:
                raise Refused(f"データベース {target} は既にあります",
                              "--replace で作り直す（キットが作った検証用 DB のみ）か --db=別名")
            if target not in mine:
                raise Refused(f"データベース {target} はこの環境の検証用 DB（scratch）ではないため消しません",
                              "--db=別名 を指定")
            console.step(f"既存の検証用 DB {target} を作り直します")
            drop_kit_database(pg, target)
        _create_database(pg, target, mark_text("scratch", settings, source.path.name),
                         like=facts.database)
        try:
            entry.sha256 = restore_into(pg, settings, source, target, options, console, facts)
            if personal:
                _apply_masking(pg, settings, target, console)
        except BaseException:
            drop_kit_database(pg, target)
            raise
        summary = summarize_database(pg, target, source.table_counts())
        for line in summary.lines():
            console.step(line)
        for difference in compare_with_manifest(source, summary):
            console.warn(difference)
        url = database_url(settings, target, masked=True)
        run_post_restore_command(settings, target, console)
        console.summary(f"検証用 DB {target} に復元しました。確認用: DATABASE_URL={url}")
        return ScratchResult(target, url, summary)


def _validate_target_name(settings: Settings, name: str) -> None:
    from pgrunbook.settings import SQL_NAME

    if not SQL_NAME.match(name):
        raise RunbookError(f"DB 名 {name!r} は使えません", "英数字と _ のみ、63 文字以内")
    if name in (settings.db_name, "postgres", "template0", "template1"):
        raise Refused(f"{name} には検証用の復元はできません（本番 DB・システム DB）",
                      "--db に別の名前を指定")


# ---- app containers -------------------------------------------------------------------
class AppWrites:
    """Stops the app containers named in the settings and starts them again."""

    def __init__(self, settings: Settings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.stopped: list[Any] = []
        self.models: list[Any] = []

    def check(self) -> None:
        if not self.settings.app_containers:
            return
        client = engine()
        from docker.errors import NotFound

        for name in self.settings.app_containers:
            try:
                self.models.append(client.containers.get(name))
            except NotFound:
                raise RunbookError(f"APP_CONTAINERS のコンテナ {name} がありません",
                                   f".env.{self.settings.env} の APP_CONTAINERS を確認") from None

    def stop(self) -> None:
        for model in self.models:
            model.reload()
            if model.status == "running":
                self.console.step(f"アプリのコンテナ {model.name} を停止（書き込み停止）")
                self.stopped.append(model)  # before stop(): an interrupted stop is still restarted
                try:
                    model.stop(timeout=30)
                except Exception as error:  # noqa: BLE001 - docker errors become one line
                    raise RunbookError(f"アプリのコンテナ {model.name} を停止できません: {error}",
                                       "docker ps で状態を確認") from error
        if not self.settings.app_containers:
            self.console.warn("APP_CONTAINERS が未設定です。アプリの書き込みは止めていません"
                              "（切り替え時に接続は切断します）")

    def start(self) -> list[str]:
        failed = []
        for model in self.stopped:
            try:
                model.start()
                self.console.step(f"アプリのコンテナ {model.name} を再開")
            except Exception as error:  # noqa: BLE001 - reported, never masks the restore's outcome
                failed.append(f"{model.name}: {error}")
        self.stopped = []
        return failed


# ---- the swap -------------------------------------------------------------------------
CLOSED = "pgrunbook: closed"


def _swap(
    pg: Postgres, live: str, incoming: str, outgoing: str,
    outgoing_comment: str, live_comment: str | None, server_version: str,
) -> None:
    """Block new sessions, end the old ones, then in ONE transaction: both renames,
    both databases open, both comments. Either all of it happened or none; in both
    cases the database named ``live`` accepts connections after.

    The first attempt is one psql run (each run costs ~50 ms); a retry, when a
    session slipped in, ends the sessions again. Interrupted (Ctrl-C, SIGTERM, a
    dropped ssh), the swap's own session is ended before anything is decided: the
    engine would otherwise let it run on and commit after we said it did not."""
    live_q, incoming_q, outgoing_q = quote_ident(live), quote_ident(incoming), quote_ident(outgoing)
    statements = [
        f"ALTER DATABASE {live_q} RENAME TO {outgoing_q}",
        f"ALTER DATABASE {incoming_q} RENAME TO {live_q}",
        f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS true",
        f"ALTER DATABASE {outgoing_q} WITH ALLOW_CONNECTIONS true",
        f"COMMENT ON DATABASE {outgoing_q} IS {quote_literal(outgoing_comment)}",
        f"COMMENT ON DATABASE {live_q} IS {quote_literal(live_comment) if live_comment else 'NULL'}",
    ]
    swap = ["-c", "BEGIN"] + [part for statement in statements for part in ("-c", statement)]
    swap += ["-c", "COMMIT"]
    # PostgreSQL 14+ can wait (up to 5 s) until the ended sessions are gone
    wait_ms = 5000 if major_version(server_version) >= 14 else 0
    wait = f", {wait_ms}" if wait_ms else ""
    terminate = (f"SELECT pg_terminate_backend(pid{wait}) FROM pg_stat_activity "
                 f"WHERE datname IN ({quote_literal(live)}, {quote_literal(incoming)}) "
                 "AND pid <> pg_backend_pid()")
    application = f"pgrunbook-swap-{uuid.uuid4().hex[:12]}"

    def run(arguments: list[str]) -> ExecResult:
        result = None
        try:
            result = pg.run(pg.psql_argv("postgres") + arguments,
                            environment={"PGAPPNAME": application})
        finally:
            if result is None:  # interrupted: end our session (an open transaction rolls back)
                with contextlib.suppress(Exception):
                    pg.end_sessions_of(application, wait_ms)
        return result

    swapped: bool | None = False
    try:
        result = run(["-c", f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS false",
                      "-c", terminate, "-c", f"\\echo {CLOSED}", *swap])
        if not result.ok and CLOSED.encode() not in result.stdout:
            raise explain_failure(result.stderr, pg.settings, live)
        last_error = "unknown"
        for attempt in range(5):
            if attempt:
                time.sleep(0.5)
                result = run(["-c", terminate, *swap])
            if result.ok or _swapped(pg, incoming, outgoing):  # committed, maybe only psql's answer lost
                swapped = True
                return
            last_error = result.error_text()
        raise RunbookError(f"名前の切り替えに失敗しました: {last_error}")
    finally:
        if not swapped:
            swapped = _swapped(pg, incoming, outgoing)
        # swapped: the new database is open (same transaction); otherwise the old
        # database must not stay closed
        if not swapped:
            with contextlib.suppress(Exception):
                pg.execute(f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS true", "postgres")


def _swapped(pg: Postgres, incoming: str, outgoing: str) -> bool | None:
    """Did the swap commit (``incoming`` gone, ``outgoing`` there)? None when the
    server cannot tell us."""
    try:
        rows = pg.query(f"SELECT count(*) FILTER (WHERE datname = {quote_literal(incoming)}), "
                        f"count(*) FILTER (WHERE datname = {quote_literal(outgoing)}) FROM pg_database",
                        "postgres")
        return rows[0] == ["0", "1"]
    except Exception:  # noqa: BLE001
        return None


def _database_level_notes(live: DatabaseFacts) -> list[str]:
    """Database-level settings and grants that pg_restore does not carry over."""
    notes = [f"ALTER {'ROLE ' + role + ' IN ' if role else ''}DATABASE ... SET {config}"
             for role, config in live.settings]
    if live.acl:
        notes.append(f"データベースの権限 {live.acl}")
    return notes


# ---- restore-replace --------------------------------------------------------------------
@dataclass(frozen=True)
class ReplaceResult:
    database: str
    previous: str
    summary: DatabaseSummary


def restore_replace(
    settings: Settings,
    file: str | None,
    confirm_env: str | None = None,
    approved_by: str | None = None,
    options: RestoreOptions | None = None,
    console: Console | None = None,
    ask: Callable[[str], str] | None = None,
) -> ReplaceResult:
    console = console or Console(settings.secrets())
    options = options or RestoreOptions()
    entry = Entry("restore-replace", settings.env, settings.db_name, settings.db_container)
    if approved_by:
        entry.details["approved_by"] = approved_by
    with recorded(settings.worklog_path, entry, console.redact):
        if not file:
            raise Refused("置き換えリストアには --file の指定が必要です",
                          f"invoke verify --env={settings.env} などで戻すファイルを確かめて指定")
        pg = Postgres(Container.find(settings.db_container), settings)
        source, facts = inspect_with_facts(pg, settings, file, console)
        entry.file = str(source.path)
        entry.details["source_env"] = source.env
        check_versions(source, facts.version)
        personal = guard_environment(settings, source, approved_by, console)
        if facts.database is None:
            raise RunbookError(f"置き換え対象の {settings.db_name} がありません",
                               "新規に作るなら restore-scratch の後で名前を変える手順を検討")
        apps = AppWrites(settings, console)
        apps.check()
        engine = pg.container.engine_description()
        entry.details["engine"] = engine
        confirm(settings, source, confirm_env, "既存 DB を置き換えます（DROP はしません）", console, ask,
                engine=engine)
        with exclusive_lock(settings.backup_dir, settings.db_container, settings.db_name,
                            "restore-replace"):
            result = _replace_locked(settings, pg, facts, source, options, personal, apps, console,
                                     entry)
        return result


def _replace_locked(
    settings: Settings, pg: Postgres, facts: ServerFacts, source: Source, options: RestoreOptions,
    personal: bool, apps: AppWrites, console: Console, entry: Entry,
) -> ReplaceResult:
    now = datetime.now()
    staging = kit_name(settings, "staging", now)
    previous = kit_name(settings, "previous", now)
    entry.details["staging"] = staging
    rollback = (f"invoke restore-rollback --env={settings.env} --previous={previous} "
                f"--confirm={settings.env}")
    failed_apps: list[str] = []
    try:
        live = facts.database
        assert live is not None  # checked by restore_replace
        _create_database(pg, staging, mark_text("staging", settings, source.path.name), like=live)
        entry.sha256 = restore_into(pg, settings, source, staging, options, console, facts)
        if personal:
            _apply_masking(pg, settings, staging, console)
        # the live database's owner, comment and settings as they are now, not as they
        # were before a restore that may have taken hours
        summary, current = side_by_side(
            lambda: summarize_database(pg, staging, None if personal else source.table_counts()),
            lambda: pg.facts(settings.db_name))
        live = current.database or live
        differences = compare_with_manifest(source, summary)
        if differences:
            raise RunbookError("復元結果がバックアップ時の記録と一致しません: " + "; ".join(differences[:5]),
                               "ファイルを invoke verify で確認。本番 DB は変更していません")
        if not summary.tables and (source.manifest or {}).get("tables"):
            raise RunbookError("復元先にテーブルがありません", "本番 DB は変更していません")
        if live.owner != settings.db_user:  # the staging DB is the kit user's own
            try:
                pg.execute(f"ALTER DATABASE {quote_ident(staging)} OWNER TO {quote_ident(live.owner)}",
                           "postgres")
            except RunbookError as error:
                console.warn(f"DB の所有者を {live.owner} にできません（{error.message}）。"
                             "置き換え後に確認してください")
        for note in _database_level_notes(live):
            console.warn(f"pg_restore は DB 単位の設定を戻しません。置き換え後に再設定してください: {note}")
        try:
            apps.stop()
            console.step(f"切り替え: {settings.db_name} → {previous}、{staging} → {settings.db_name}")
            _swap(pg, settings.db_name, staging, previous,
                  mark_text("previous", settings, "replaced by " + source.path.name), live.comment,
                  facts.version)
        finally:
            failed_apps = apps.start()
    except BaseException as error:
        swapped = _swapped(pg, staging, previous)
        stopped = (f" 再開できなかったアプリ: {'; '.join(failed_apps)}（docker start で再開）"
                   if failed_apps else "")
        if swapped:
            raise RunbookError(
                f"切り替えは完了しています（{settings.db_name} は新しい DB、以前の DB は {previous}）が、"
                f"その後に失敗しました: {error}.{stopped}",
                f"元に戻すなら: {rollback}",
            ) from error
        left = _cleanup(f"検証用 DB {staging} の削除", lambda: drop_kit_database(pg, staging), console)
        if swapped is None or left or failed_apps:
            state = "不明（サーバーに問い合わせできません）" if swapped is None else "元のまま"
            raise RunbookError(
                f"置き換えに失敗しました: {error}。本番 DB {settings.db_name} は{state}。"
                + (f" {staging} が残っています（invoke restore-drop --env={settings.env} --db={staging}）。"
                   if left else "") + stopped,
                f"invoke restore-list --env={settings.env} で状態を確認",
            ) from error
        raise
    entry.details["previous"] = previous
    # planner statistics for the new database right away (autovacuum would take a
    # minute or more); in the background, so the app is not kept waiting for it
    with contextlib.suppress(RunbookError):
        pg.container.start_detached(pg.psql_argv(settings.db_name) + ["-c", "ANALYZE"],
                                    settings.password_environment())
        console.step("プランナー統計の作成（ANALYZE）をバックグラウンドで開始")
    if failed_apps:
        raise RunbookError(
            f"DB は置き換えましたが、アプリのコンテナを再開できません: {'; '.join(failed_apps)}",
            f"docker start で再開。元に戻すなら: {rollback}",
        )
    try:
        # the live database is the staging database renamed: its summary stands
        for line in summary.lines():
            console.step(line.replace(staging, settings.db_name, 1))
        run_post_restore_command(settings, settings.db_name, console)
    except RunbookError as error:
        raise RunbookError(
            f"置き換えは完了しましたが、事後確認で失敗しました: {error.message}",
            f"以前の DB は {previous} に残っています。元に戻すなら: {rollback}",
        ) from None
    console.summary(
        f"置き換え完了: {settings.db_name} ← {source.path.name}。以前の DB は {previous} に保管。"
        f" 元に戻す: {rollback} / 不要になったら: invoke restore-drop --env={settings.env} "
        f"--db={previous} --confirm={settings.env}"
    )
    return ReplaceResult(settings.db_name, previous, summary)


# ---- rollback, list, drop --------------------------------------------------------------
def restore_rollback(
    settings: Settings, previous: str, confirm_env: str | None, console: Console,
    ask: Callable[[str], str] | None = None,
) -> str:
    entry = Entry("restore-rollback", settings.env, settings.db_name, settings.db_container)
    entry.details["previous"] = previous
    with recorded(settings.worklog_path, entry, console.redact):
        pg = Postgres(Container.find(settings.db_container), settings)
        kit = {db.name: db for db in kit_databases(pg)}
        if previous not in kit or kit[previous].role != "previous" or kit[previous].env != settings.env:
            raise Refused(f"{previous} はこの環境の置き換え前 DB ではありません",
                          f"invoke restore-list --env={settings.env} で確認")
        placeholder = Source(Path(previous), "custom", settings.env, None, None, kit[previous].size, None)
        confirm(settings, placeholder, confirm_env, f"{previous} に戻します（ロールバック）", console, ask,
                engine=pg.container.engine_description())
        apps = AppWrites(settings, console)
        apps.check()
        rolled = kit_name(settings, "rolledback")
        with exclusive_lock(settings.backup_dir, settings.db_container, settings.db_name,
                            "restore-rollback"):
            # the live database carries the original comment since the replace
            facts = pg.facts(settings.db_name)
            live_comment = facts.database.comment if facts.database else None
            failed: list[str] = []
            try:
                apps.stop()
                _swap(pg, settings.db_name, previous, rolled,
                      mark_text("rolledback", settings, "rolled back"), live_comment, facts.version)
            finally:
                failed = apps.start()
        if failed:
            raise RunbookError(f"ロールバックしましたが、アプリを再開できません: {'; '.join(failed)}",
                               "docker start で再開")
        console.summary(f"ロールバック完了: {previous} を {settings.db_name} に戻しました。"
                        f"置き換え後の DB は {rolled} に保管")
        return rolled


def list_kit_databases(settings: Settings, console: Console) -> list[KitDatabase]:
    pg = Postgres(Container.find(settings.db_container), settings)
    return [db for db in kit_databases(pg) if db.env == settings.env]


def drop_database(
    settings: Settings, name: str, confirm_env: str | None, console: Console
) -> None:
    entry = Entry("restore-drop", settings.env, settings.db_name, settings.db_container)
    entry.details["target"] = name
    with recorded(settings.worklog_path, entry, console.redact):
        pg = Postgres(Container.find(settings.db_container), settings)
        if name == settings.db_name:
            raise Refused("稼働中の DB は削除できません", "キットが作った DB だけを指定")
        kit = {db.name: db for db in kit_databases(pg) if db.env == settings.env}
        if name not in kit:
            raise Refused(f"{name} はキットが作ったこの環境の DB ではないため削除しません",
                          f"invoke restore-list --env={settings.env} で確認")
        if kit[name].role in ("previous", "rolledback") and confirm_env != settings.env:
            raise Refused(f"{name} は置き換え前の DB です。削除すると元に戻せません",
                          f"確かめたうえで --confirm={settings.env} を付けて再実行")
        drop_kit_database(pg, name)
        console.summary(f"{name} を削除しました")


# ---- verify --restore-test ----------------------------------------------------------
def restore_test(settings: Settings, file: str | None, console: Console) -> DatabaseSummary:
    entry = Entry("verify-restore-test", settings.env, settings.db_name, settings.db_container)
    with recorded(settings.worklog_path, entry, console.redact):
        pg = Postgres(Container.find(settings.db_container), settings)
        source, facts = inspect_with_facts(pg, settings, file, console)
        entry.file = str(source.path)
        if source.env not in (None, settings.env):
            raise Refused(f"{source.path.name} は環境 {source.env} のファイルです",
                          f"--env={source.env} で実行")
        check_versions(source, facts.version)
        target = kit_name(settings, "verify")

        _create_database(pg, target, mark_text("verify", settings, source.path.name),
                         like=facts.database)
        try:
            entry.sha256 = restore_into(pg, settings, source, target, RestoreOptions(), console,
                                        facts)
            summary = summarize_database(pg, target, source.table_counts())
        finally:
            drop_kit_database(pg, target)
        differences = compare_with_manifest(source, summary)
        if source.manifest is None:
            console.warn("マニフェストがないため行数の照合はできません（復元できることのみ確認）")
        if differences:
            raise RunbookError("復元テストで差異: " + "; ".join(differences[:5]),
                               "このバックアップは信用できません。取り直して再検証")
        entry.details["tables"] = len(summary.tables)
        console.summary(f"復元テスト OK: {source.path.name}（テーブル {len(summary.tables)}、"
                        f"行数合計 {sum(summary.tables.values())}、一時 DB {target} は削除済み）")
        return summary
