"""Prestaged replace (RESTORE_PRESTAGE): the restore test's database kept for the night.

The commonest 2 a.m. restore is "the newest good backup", and the scheduled
``verify --restore-test`` has just restored exactly that in full. With
RESTORE_PRESTAGE=true that database is kept instead of dropped:

* only when the file tested is this env's newest usable backup (not future-dated,
  not suspect, its checksum not in disagreement with its manifest);
* marked by its comment with the file's name, the sha256 of the bytes restored
  (equal to the recorded one: restore_into checks it), the pg_restore flags
  that shape owners and privileges, and its row total;
* closed to connections (ALLOW_CONNECTIONS false) so that nothing writes to it;
* replacing this env's older prestaged databases once it is in place (or before,
  when the disk cannot hold both).

``restore-replace --file=<that backup>`` then claims it (the mark matches the
file's recorded sha256, the database is still closed, the flags match) and
goes on as any replace does: row counts against the manifest, owners and
privileges against the live database, the shrink check, the journal, the
swap. Only the restore itself is skipped. A prestaged database that fails a
check is dropped and the file is restored as usual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.infra import discovery
from pgrunbook.infra.postgres import Postgres, ServerFacts, quote_ident, quote_literal
from pgrunbook.restore import checks
from pgrunbook.restore.checks import DatabaseSummary
from pgrunbook.restore.databases import (
    MARK,
    cleanup_step,
    drop_kit_database,
    kit_name,
    mark_text,
    parse_mark,
)
from pgrunbook.restore.source import Source
from pgrunbook.restore.staging import NoSpace, RestoreOptions, check_free_space
from pgrunbook.store import select

ROLE = "prestaged"
DETAIL = re.compile(r"file=(?P<file>\S+) sha256=(?P<sha256>[0-9a-f]{64}) "
                    r"no_owner=(?P<no_owner>[01]) no_acl=(?P<no_acl>[01]) rows=(?P<rows>\d+)"
                    r"(?: analyzed=(?P<analyzed>[01]))?(?: files=(?P<files>[0-9a-f]{16}))?"
                    r"(?: lsn=(?P<lsn>[0-9A-F]+/[0-9A-F]+))?")


@dataclass(frozen=True)
class Prestaged:
    name: str
    file: str
    sha256: str
    no_owner: bool
    no_acl: bool
    rows: int
    created_at: str
    size: int
    open: bool  # accepting connections: someone opened it, it is not trusted
    comment: str  # the mark as written, put back when a refused replace leaves it as it was
    analyzed: bool = False  # the planner's statistics were made when it was kept (ready_for_swap)
    files: str = ""  # its tables' files then (checks.files_digest): proves it untouched since
    lsn: str = ""  # the server's WAL position when it was marked (a checkpoint since wrote it out)

    @property
    def made_at(self) -> datetime:
        """created_at as a time: marks carry local time with its offset, so text order is
        wrong across time zones (cron under UTC, an operator under Asia/Tokyo) and DST."""
        return _parsed(self.created_at)

    def describe(self) -> str:
        return f"{self.name}（{self.file} から {self.created_at} に復元・照合、{human_size(self.size)}）"


def restore_flags(source: Source, options: RestoreOptions, replace: bool) -> tuple[bool, bool]:
    """What pg_restore is told about owners and privileges (--no-owner, --no-acl)."""
    return not options.restores_owners(source, replace), options.no_acl


def detail(source: Source, sha256: str, flags: tuple[bool, bool], rows: int) -> str:
    no_owner, no_acl = flags
    return (f"file={source.path.name} sha256={sha256} no_owner={int(no_owner)} "
            f"no_acl={int(no_acl)} rows={rows}")


def prestaged_databases(pg: Postgres, settings: Settings) -> list[Prestaged]:
    """This env's prestaged databases, oldest first."""
    rows = pg.query(PRESTAGED_QUERY, "postgres")
    return from_rows(settings.env, [(name, comment, allow == "t", int(size or 0))
                                    for name, comment, allow, size in rows])


# the kit user owns what it prestaged; CONNECT is asked first so that a database it
# may not size never fails the query (`invoke check` folds this into its own)
PRESTAGED_QUERY = (
    "SELECT datname, shobj_description(oid, 'pg_database'), datallowconn, "
    "CASE WHEN has_database_privilege(oid, 'CONNECT') THEN pg_database_size(oid) END "
    f"FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE '{MARK}:{ROLE}:%' ORDER BY 1")


def from_rows(env: str, rows: list[tuple[str, str, bool, int]]) -> list[Prestaged]:
    """(name, comment, datallowconn, size) of marked databases -> this env's, oldest first.
    A mark the kit did not write in full is never claimed (restore-list shows it)."""
    found = []
    for name, comment, allow, size in rows:
        db = parse_mark(name, comment, size, allow)
        match = DETAIL.search(db.detail) if db and db.role == ROLE and db.env == env else None
        if match:
            found.append(Prestaged(db.name, match["file"], match["sha256"], match["no_owner"] == "1",
                                   match["no_acl"] == "1", int(match["rows"]), db.created_at, db.size,
                                   db.allow_connections, comment, match["analyzed"] == "1",
                                   match["files"] or "", match["lsn"] or ""))
    return sorted(found, key=lambda p: p.made_at)


def _parsed(created_at: str) -> datetime:
    try:
        when = datetime.fromisoformat(created_at)
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def by_file(settings: Settings, console: Console) -> dict[str, str] | None:
    """For ``invoke list``: backup file -> its prestaged database (None: the server
    cannot be asked; the list itself never needs it)."""
    try:
        pg = Postgres(discovery.db_container(settings), settings)
        found = prestaged_databases(pg, settings)
    except RunbookError as error:
        console.warn(f"事前展開 DB の有無は分かりません（{error.message}）")
        return None
    return {p.file: p.name + ("（接続可: 使われません）" if p.open else "") for p in found}


def wanted_for(settings: Settings, source: Source) -> str | None:
    """None when the file tested should be kept prestaged, else why not (in words)."""
    if not settings.restore_prestage:
        return "RESTORE_PRESTAGE が無効"
    if source.env not in (None, settings.env):
        return f"環境 {source.env} のファイル"
    if not source.expected_sha256:
        return "sha256 の記録がないファイル"
    newest = select.newest_sound(settings)
    if newest is None or newest.backup.path.name != source.path.name:
        return "この環境の最新のバックアップではない"
    return None


def make_room(pg: Postgres, settings: Settings, facts: ServerFacts, source: Source,
              console: Console) -> None:
    """Before a restore test that will be kept: when the disk cannot hold it beside
    the older prestaged databases it is to replace, drop those first."""
    older = prestaged_databases(pg, settings)
    if not older:
        return
    try:
        check_free_space(pg, facts, source, archive_inside=False)
    except NoSpace:
        for old in older:
            console.step(f"空きを作るため、置き換えられる古い事前展開 DB {old.name} を先に削除")
            drop_kit_database(pg, old.name)


@dataclass(frozen=True)
class Restored:
    """A kit database restored from a file and checked, as its prestaged mark records it:
    its name, the file, the sha256 of the bytes restored, the (no_owner, no_acl) it was
    restored with (``restore_flags``) and its rows."""

    database: str
    source: Source
    sha256: str
    flags: tuple[bool, bool]
    rows: int

    def detail(self) -> str:
        return detail(self.source, self.sha256, self.flags, self.rows)


def keep(pg: Postgres, settings: Settings, restored: Restored, console: Console) -> None:
    """The restore test passed: mark the restored database prestaged and close it, in one
    transaction, then drop the older prestaged databases of this env."""
    database = restored.database
    proof = ready_for_swap(pg, database, restored.source, console)
    comment = mark_text(ROLE, settings, restored.detail() + proof)
    _mark(pg, database, comment, allow_connections=False)
    mine = _parsed(comment.split(":", 3)[3][:25])
    for old in prestaged_databases(pg, settings):
        if old.name != database and old.made_at <= mine:
            cleanup_step(f"古い事前展開 DB {old.name} の削除",
                         lambda name=old.name: drop_kit_database(pg, name), console)


def ready_for_swap(pg: Postgres, database: str, source: Source, console: Console) -> str:
    """Done at night what a replace would otherwise do at swap time; returns what the
    mark records of it. The planner's statistics (an ANALYZE, unless the archive carried
    them): the swapped-in database plans at once, no ANALYZE follows the swap. And its
    tables' files: a replace proves the rows unchanged by one read of the statistics and
    the catalog (checks.UNTOUCHED) instead of counting every table again."""
    if not source.carries_statistics:
        console.step(f"{database} のプランナー統計を作成（ANALYZE。置き換えの後に要らないように）")
        pg.execute("ANALYZE", database)
    found = checks.read_untouched(pg, database)
    return f" analyzed=1 files={found.files} lsn={found.wal_lsn}"


@dataclass(frozen=True)
class Proven:
    """What one read of a claimed database (checks.UNTOUCHED) stands in for."""

    verdict: str  # checks.Untouched.verdict: untouched, written or unknown
    summary: DatabaseSummary | None  # untouched: its rows as the manifest says
    written_out: bool  # restored long enough ago that the server's checkpoints wrote it out


def proven(pg: Postgres, prestaged: Prestaged, source: Source, now: datetime | None = None,
           untouched: checks.Untouched | None = None) -> Proven:
    """The claimed database's rows, proven without counting: the restore test compared
    them with the manifest and nobody has written since (checks.Untouched; "unknown" for
    an older mark or statistics reset by a crash: the caller counts; "written": not to be
    used, even when a count would still agree). And whether a CHECKPOINT before the apps
    stop would still have anything of it to write (checks.Untouched.written_out).
    ``untouched``: UNTOUCHED as already read of it since its claim."""
    untouched = untouched or checks.read_untouched(pg, prestaged.name)
    expected = source.table_counts()
    verdict = untouched.verdict(expected, prestaged.files)
    summary = None
    if verdict == "untouched" and expected is not None:
        summary = checks.with_prisma_state(pg, untouched.summary(prestaged.name, expected))
    return Proven(verdict, summary, untouched.written_out(prestaged.lsn, prestaged.made_at.timestamp(),
                                                          (now or datetime.now(timezone.utc)).timestamp()))


@dataclass(frozen=True)
class Choice:
    """What a replace of a file does about this env's prestaged databases."""

    use: Prestaged | None = None  # claimed: the restore is skipped
    discard: Prestaged | None = None  # matches the file but is not trusted: dropped, then restored
    why: str = ""  # in words, for the banner

    def banner(self) -> str:
        if self.use:
            return (f"  復元       : 事前展開 DB {self.use.name} を使う"
                    f"（{self.use.created_at} に復元・照合済み。復元を省き、行数・権限の確認と切り替えのみ）")
        return f"  復元       : ファイルから（{self.why}）" if self.why else ""


def choose(pg: Postgres, settings: Settings, source: Source, options: RestoreOptions) -> Choice:
    """The prestaged database a replace of ``source`` may claim. Changes nothing."""
    if not options.prestaged or source.env not in (None, settings.env) or not source.expected_sha256:
        return Choice()
    found = prestaged_databases(pg, settings)
    candidates = [p for p in found if p.file == source.path.name]
    if not candidates:
        usable = [p for p in found if not p.open]
        return Choice(why=f"事前展開 DB は {usable[-1].file} のもの。そのファイルに戻すなら復元を省けます"
                      if usable else "")
    chosen = candidates[-1]
    if chosen.sha256 != source.expected_sha256:
        return Choice(discard=chosen, why=f"事前展開 DB {chosen.name} はファイルの sha256 の記録と"
                                          "合わないため削除して使いません")
    if chosen.open:
        return Choice(discard=chosen, why=f"事前展開 DB {chosen.name} は後から接続を受け付ける状態にされ、"
                                          "書き込まれた可能性があるため削除して使いません")
    if (chosen.no_owner, chosen.no_acl) != restore_flags(source, options, replace=True):
        return Choice(why=f"事前展開 DB {chosen.name} は所有者・権限の指定が今回と違うため使いません")
    return Choice(use=chosen)


def claim(pg: Postgres, database: str, staging_comment: str) -> None:
    """The prestaged database becomes this run's staging database (its mark, open):
    from here on an interruption leaves a staging database that restore-recover drops."""
    _mark(pg, database, staging_comment, allow_connections=True)


CHANGED = "pgrunbook-prestaged-changed"


def claim_unchanged(pg: Postgres, prestaged: Prestaged, staging_comment: str) -> bool:
    """``claim``, in the same transaction as the check that the database is still there,
    closed, with the mark ``choose`` read (one round trip, not two). False: a restore
    test replaced or dropped it meanwhile, nothing was changed."""
    target, name = quote_ident(prestaged.name), quote_literal(prestaged.name)
    body = (f"BEGIN IF NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = {name} AND NOT datallowconn "
            f"AND shobj_description(oid, 'pg_database') = {quote_literal(prestaged.comment)}) THEN "
            f"RAISE EXCEPTION '{CHANGED}'; END IF; "
            f"EXECUTE {quote_literal(f'COMMENT ON DATABASE {target} IS {quote_literal(staging_comment)}')}; "
            f"EXECUTE {quote_literal(f'ALTER DATABASE {target} WITH ALLOW_CONNECTIONS true')}; END")
    try:
        pg.execute(f"DO {quote_literal(body)}", "postgres")
    except RunbookError as error:
        if CHANGED in error.message:
            return False
        raise
    return True


def put_back(pg: Postgres, prestaged: Prestaged) -> None:
    """A replace refused before the swap (privileges, prepared transactions) changed
    no rows: the database is prestaged again, closed, with its original mark."""
    _mark(pg, prestaged.name, prestaged.comment, allow_connections=False)


def retain(pg: Postgres, settings: Settings, restored: Restored) -> str:
    """A replace refused for a state that can pass (a prepared transaction, a session
    DB_USER cannot end) keeps what it restored: the restored database becomes a
    prestaged database of its file (marked, closed), which the retry claims instead of
    restoring again; renamed as one when nothing holds it. Returns its name.
    The env's other prestaged databases are left alone (restore-list, check)."""
    database = restored.database
    _mark(pg, database, mark_text(ROLE, settings, restored.detail()), allow_connections=False)
    name = kit_name(settings, ROLE)
    try:
        pg.execute(f"ALTER DATABASE {quote_ident(database)} RENAME TO {quote_ident(name)}", "postgres")
    except RunbookError:  # a session DB_USER cannot end is on it: the mark is what counts
        return database
    return name


def _mark(pg: Postgres, database: str, comment: str, allow_connections: bool) -> None:
    target = quote_ident(database)
    pg.execute(f"BEGIN; COMMENT ON DATABASE {target} IS {quote_literal(comment)}; "
               f"ALTER DATABASE {target} WITH ALLOW_CONNECTIONS {str(allow_connections).lower()}; "
               "COMMIT;", "postgres")
