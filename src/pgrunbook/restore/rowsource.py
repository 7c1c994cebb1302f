"""Where the rows of a partial restore come from: a database on a server (``RowSource``).

Either a kit database (role ``partial``) into which only what is needed is
restored from a backup file, dropped when the work is done, or a server a
caller hands over (the PITR copy at a time, made and dropped above this area).

From a ``.dump``: ``pg_restore -l`` lists it, and ``-L`` restores every definition
(schemas, types, functions, tables: what the tables' columns may need) but the
data of the named tables only; no keys or indexes (the rows are read once, in key
order: a sort costs less than building the index first), foreign keys, triggers,
privileges, sequence values or other tables' rows. The
archive goes to pg_restore's stdin and is read only as far as needed (up to the
last table asked for); copying it into the container first so that pg_restore
could seek was slower (the whole file copied and written for a few blocks read).
From a ``.sql``: the same choice made on the file's own section headers
(``-- Name: …; Type: …``) on its way to psql, so the other tables' rows never
reach the container; a file without those headers is restored whole. The
restored tables are counted against the manifest when it has their counts.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgrunbook.core import journal
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import HashingReader, file_chunks
from pgrunbook.core.settings import Settings
from pgrunbook.infra.postgres import Ask, Postgres, ServerFacts, quote_ident, quote_label
from pgrunbook.infra.session import Session
from pgrunbook.restore.databases import create_database, drop_kit_database, kit_databases, kit_name, mark_text
from pgrunbook.restore.source import Source, check_digest
from pgrunbook.restore.sqlfilter import Scanner, without_owner_and_acl
from pgrunbook.restore.staging import check_free_space, upload_prefix
from pgrunbook.restore.tables import (
    CATALOG_AND_VERSION,
    Catalog,
    Table,
    catalog_of,
    columns_sql,
    read_catalog,
)

ROLE = "partial"
# the source is read once, sorted by key (it has no index): a sort in memory, not on disk
SORT_OPTIONS = "-c work_mem=128MB"

# TOC entry types that define what tables and their columns need (kept whole);
# every other entry is data, post-data or a privilege, kept only as said below
DEFINITIONS = {
    "SCHEMA", "EXTENSION", "TYPE", "SHELL TYPE", "DOMAIN", "FUNCTION", "PROCEDURE", "AGGREGATE",
    "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "COLLATION", "CONVERSION", "CAST",
    "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE", "TABLE", "TABLE ATTACH", "SEQUENCE", "SEQUENCE OWNED BY", "DEFAULT",
    "VIEW", "MATERIALIZED VIEW", "ACCESS METHOD", "TRANSFORM",
}
TOC_LINE = re.compile(r"^\d+; \d+ \d+ (?P<rest>.+)$")
TYPES_BY_LENGTH = sorted(DEFINITIONS | {"TABLE DATA", "CONSTRAINT", "FK CONSTRAINT", "INDEX",
                                        "SEQUENCE SET", "MATERIALIZED VIEW DATA", "ACL",
                                        "DEFAULT ACL", "COMMENT", "TRIGGER"}, key=len, reverse=True)


DATA = {"TABLE DATA", "SEQUENCE SET", "MATERIALIZED VIEW DATA", "BLOB DATA", "BLOBS", "LARGE OBJECTS"}
PRIVILEGE_ERRORS = r'role "[^"]+" does not exist|must be owner|permission denied'


def keep_definition(kind: str, _schema: str, _tag: str, _tables: set[str]) -> bool:
    """Everything but rows (a schema-only restore of a .sql file)."""
    return kind not in DATA


def keep_entry(kind: str, schema: str, tag: str, tables: set[str]) -> bool:
    """Whether a TOC entry (or a .sql section) is restored for the data of ``tables``
    (``schema.name``): every definition and the tables' rows. No key or index: the rows
    are read once, in key order, and a sort then costs less than building the index."""
    if kind in DEFINITIONS:
        return True
    return kind == "TABLE DATA" and f"{schema}.{tag}" in tables


def parse_toc_line(line: str) -> tuple[str, str, str] | None:
    """(type, schema, tag) of a ``pg_restore -l`` line, or None for a comment."""
    found = TOC_LINE.match(line.strip())
    if not found:
        return None
    rest = found["rest"]
    kind = next((k for k in TYPES_BY_LENGTH if rest.startswith(k + " ")), rest.split(" ", 1)[0])
    words = rest[len(kind):].strip().rsplit(" ", 1)[0]  # the owner is the last word
    schema, _, tag = words.partition(" ")
    return kind, schema, tag


def toc_label(line: str, labels: Iterable[str]) -> str | None:
    """Which of ``labels`` (``schema.name``) a ``pg_restore -l`` line of a table or its data
    names. The list prints names bare, so a blank in a schema, a name or an owner makes
    ``parse_toc_line``'s split ambiguous; a known label is matched whole instead."""
    found = TOC_LINE.match(line.strip())
    if not found:
        return None
    rest = found["rest"]
    for kind in ("TABLE DATA ", "TABLE "):
        if rest.startswith(kind):
            names = rest[len(kind):]
            return next((label for label in sorted(labels, key=len, reverse=True)  # the longest first
                         if names.startswith(" ".join(label.split(".", 1)) + " ")), None)
    return None


def filtered_listing(listing: str, tables: set[str]) -> tuple[str, set[str]]:
    """The ``-L`` list for ``tables``, and the tables whose rows it holds."""
    kept, found = [], set()
    for line in listing.splitlines():
        entry = parse_toc_line(line)
        if entry is None:
            continue
        if entry[0] == "TABLE DATA":
            label = toc_label(line, tables)
            if label is None:
                continue
            found.add(label)
        elif not keep_entry(*entry, tables):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n", found


SECTION = re.compile(rb"^-- (?:Data for )?Name: (?P<tag>.*); Type: (?P<kind>[A-Z ]+); "
                     rb"Schema: (?P<schema>[^;]*); Owner: [^;]*$")
SETTING = re.compile(rb"^(SET [a-z_]+ = .*;|SELECT pg_catalog\.set_config\(.*\);|\\(?:un)?restrict \S+)\r?$")


def sql_sections(chunks: Iterable[bytes], tables: set[str], found: set[str],
                 keep: Callable[[str, str, str, set[str]], bool] = keep_entry) -> Iterator[bytes]:
    """A .sql dump with only what ``keep`` keeps: a section is cut at its header;
    between sections the session settings and psql's \\restrict lines stay. The
    names of the tables whose rows passed are added to ``found``."""
    scanner = Scanner()
    keeping = True
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        kept = []
        for line in lines:
            top_level = scanner.top_level()
            if top_level:
                header = SECTION.match(line)
                if header:
                    kind, schema = header["kind"].decode(), header["schema"].decode("utf-8", "replace")
                    tag = header["tag"].decode("utf-8", "replace")
                    keeping = keep(kind, schema, tag, tables)
                    if keeping and kind == "TABLE DATA":
                        found.add(f"{schema}.{tag}")
            scanner.feed(line)
            if keeping or (top_level and SETTING.match(line)):
                kept.append(line + b"\n")
        if kept:
            yield b"".join(kept)
    if rest and keeping:
        yield rest


@dataclass
class RowSource:
    """A database the rows come from. ``counts``: rows per table the source vouches
    for (a backup's manifest) when the server cannot count them (schema only)."""

    pg: Postgres
    database: str
    label: str
    file: str | None = None
    sha256: str | None = None
    counts: dict[str, int] | None = None
    schema_only: bool = False
    owners_and_privileges: bool = True  # restored as the archive has them (comparable)
    # the backup was made with them (not --no-owner / --no-acl: a replace then keeps live's)
    archive_owners: bool = True
    archive_privileges: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    catalog: Catalog | None = None  # read once, when first needed

    def tables(self) -> Catalog:
        """The source's catalog, read once (a kit database's comes with its row counts)."""
        if self.catalog is None:
            self.catalog = read_catalog(self.pg, self.database)
        return self.catalog


def handed(pg: Postgres, database: str, label: str, **details: Any) -> RowSource:
    """A server a caller made and will drop (the PITR copy at a time)."""
    return RowSource(pg, database, label, details=dict(details))


def _detail(source: Source) -> str:
    pid = os.getpid()
    return f"{source.path.name} pid={pid} started={journal.process_started(pid)}"


def drop_leftovers(pg: Postgres, settings: Settings, console: Console) -> None:
    """This env's partial databases that a run on this host left (killed): their
    process is gone."""
    for db in kit_databases(pg):
        if db.role != ROLE or db.env != settings.env or db.host != socket.gethostname():
            continue
        found = re.search(r"\bpid=(\d+) started=(\S+)", db.detail)
        if found and journal.running(int(found[1]), found[2]):
            continue  # its run is still going
        console.step(f"中断された実行が残した作業用 DB {db.name} を削除")
        drop_kit_database(pg, db.name)


@dataclass(frozen=True)
class Extract:
    """What a kit database gets from a backup file: every definition and the rows of
    ``tables`` (``schema.name``), or (``schema_only``) the file's whole schema with
    owners and privileges and no rows. ``partitions``: for a partitioned table among
    ``tables``, its leaf partitions as live has them: an archive holds its rows in
    theirs (each taken if the file has it: a partition made since the backup has no
    rows there)."""

    source: Source
    tables: set[str]
    schema_only: bool = False
    partitions: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def with_rows(self) -> set[str]:
        """The tables whose rows are taken from the file."""
        return self.tables | {leaf for leaves in self.partitions.values() for leaf in leaves}


@contextlib.contextmanager
def from_archive(pg: Postgres, settings: Settings, facts: ServerFacts, extract: Extract,
                 console: Console) -> Iterator[RowSource]:
    """A kit database made like live (``facts``) with what ``extract`` names from the
    file; dropped when the block ends, however it ends."""
    source, schema_only = extract.source, extract.schema_only
    drop_leftovers(pg, settings, console)
    name = kit_name(settings, ROLE)
    create_database(pg, name, mark_text(ROLE, settings, _detail(source)), like=facts)
    try:
        options = (source.manifest or {}).get("options", {})
        restored = RowSource(pg, name, source.path.name, str(source.path), counts=source.table_counts(),
                             schema_only=schema_only, archive_owners=not options.get("no_owner"),
                             archive_privileges=not options.get("no_acl"))
        if source.format == "plain":
            restored.sha256, found = _load_sql(settings, extract, console, restored)
        else:
            restored.sha256, found = _load_archive(settings, facts, extract, console, restored)
        if not schema_only:
            _check_restored(pg, restored, extract, found)
        yield restored
    finally:
        console.step(f"作業用 DB {name} を削除")
        with contextlib.suppress(Exception):  # never hides the work's own outcome
            drop_kit_database(pg, name)


def _load_archive(settings: Settings, facts: ServerFacts, extract: Extract, console: Console,
                  restored: RowSource) -> tuple[str, set[str]]:
    """pg_restore reads the archive on its stdin, as far as it needs it: the table of
    contents (and definitions), then up to the end of the last table asked for, into
    the ``restored`` kit database. The file is not copied into the container; the hash
    of what was not sent is taken from the file on the host, and compared before any
    row is used."""
    pg, database = restored.pg, restored.database
    source, schema_only = extract.source, extract.schema_only
    digest = HashingReader(source.path)
    check_free_space(pg, facts, source, archive_inside=False)
    base = ["pg_restore", "--exit-on-error", "-U", settings.db_user, "-d", database]
    if schema_only:
        console.step(f"{source.path.name} の定義（行なし）を作業用 DB {database} に復元")
        result = pg.run(base + ["--schema-only", "--single-transaction"], stdin=digest.chunks())
        if not result.ok and re.search(PRIVILEGE_ERRORS, result.stderr):
            console.step("所有者・権限は戻せないため、定義だけを比べます")
            restored.owners_and_privileges = False  # (one transaction: nothing of the first try is left)
            result = pg.run(base + ["--schema-only", "--single-transaction", "--no-owner", "--no-acl"],
                            stdin=file_chunks(source.path))
        check_digest(source, digest.hexdigest())
        _raise_unless_ok(result.ok, result.error_text(), database)
        return digest.hexdigest(), set()
    if source.toc is not None:  # the table of contents as the file's check read it
        text = "\n".join(source.toc)
    else:  # the table of contents only, framed and asked again if lost: a lost listing once
        # read as "the archive holds none of these tables"
        listing = pg.read(["pg_restore", "-l"], stdin=lambda: file_chunks(source.path))
        _raise_unless_ok(listing.ok, listing.error_text(), database)
        text = listing.stdout.decode("utf-8", "replace")
    chosen, found = filtered_listing(text, extract.with_rows)
    console.step(f"{source.path.name} から {len(found)} テーブルの行だけを作業用 DB {database} に復元"
                 "（pg_restore -L、必要なところまで読む）")
    with _list_in_container(pg, settings, chosen) as listed:
        # the list's directory removed by the same exec, after pg_restore (one exec less;
        # a kit killed meanwhile leaves nothing either: the exec runs on)
        result = pg.run(["sh", "-c", 'd=$1; shift; "$@"; rc=$?; rm -rf "$d"; exit "$rc"', "sh",
                         str(Path(listed).parent), *base, "--no-owner", "--no-acl", "-L", listed],
                        stdin=digest.chunks())
        listed.removed = True
    check_digest(source, digest.hexdigest())
    _raise_unless_ok(result.ok, result.error_text(), database)
    return digest.hexdigest(), found


class _Listed(str):
    """The list's path in the container; ``removed`` once the command that used it removed it."""

    removed = False


@contextlib.contextmanager
def _list_in_container(pg: Postgres, settings: Settings, text: str) -> Iterator[_Listed]:
    """The ``-L`` list as a file in the container (under the env's upload prefix, which
    restore-recover cleans if a killed run leaves it), removed after unless the command
    that read it did (``removed``)."""
    private = upload_prefix(settings.env) + uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory(prefix="pgrunbook-list-") as folder:
        path = Path(folder) / "restore.list"
        path.write_text(text, encoding="utf-8")
        inside = _Listed(pg.container.put_file(path, "/tmp", f"{private}/restore.list"))
    try:
        yield inside
    finally:
        if not inside.removed:
            with contextlib.suppress(Exception):
                pg.container.run(["rm", "-rf", f"/tmp/{private}"])


def _load_sql(settings: Settings, extract: Extract, console: Console,
              restored: RowSource) -> tuple[str, set[str]]:
    """psql reads the .sql file's sections that ``extract`` names into the ``restored``
    kit database, filtered on the way (owners and privileges off for rows)."""
    pg, database = restored.pg, restored.database
    source, schema_only = extract.source, extract.schema_only
    digest = HashingReader(source.path)
    found: set[str] = set()
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-U", settings.db_user,
            "-d", database]
    if schema_only:
        console.step(f"{source.path.name} の定義（行なし）を作業用 DB {database} に復元")
        result = pg.run(argv, stdin=sql_sections(digest.chunks(), set(), found, keep_definition),
                        on_stdout=lambda _data: None)
        if not result.ok and re.search(PRIVILEGE_ERRORS, result.stderr):
            console.step("所有者・権限は戻せないため、定義だけを比べます")
            restored.owners_and_privileges = False  # (one transaction: nothing of the first try is left)
            digest = HashingReader(source.path)
            result = pg.run(argv, stdin=without_owner_and_acl(
                sql_sections(digest.chunks(), set(), found, keep_definition), owners=True, acl=True),
                on_stdout=lambda _data: None)
    else:
        console.step(f"{source.path.name} から名前を指定したテーブルの行だけを作業用 DB {database} に"
                     "流します（psql）")
        chunks = sql_sections(digest.chunks(), extract.with_rows, found)
        result = pg.run(argv, stdin=without_owner_and_acl(chunks, owners=True, acl=True),
                        on_stdout=lambda _data: None)
    check_digest(source, digest.hexdigest())
    _raise_unless_ok(result.ok, result.error_text(), database)
    return digest.hexdigest(), found


def _raise_unless_ok(ok: bool, error: str, database: str) -> None:
    if not ok:
        raise RunbookError(f"作業用 DB {database} への復元に失敗しました: {error}",
                           "ファイルを invoke verify で確認。稼働中の DB は変更していません")


def _check_restored(pg: Postgres, restored: RowSource, extract: Extract, found: set[str]) -> None:
    """Every table asked for had rows in the file (a partitioned one: in itself or in
    one of its partitions), in the number the manifest says; the kit database's
    catalog read with the counts (``restored.catalog``)."""
    absent = sorted(label for label in extract.tables - found
                    if not found & set(extract.partitions.get(label, ())))
    tables = extract.tables | found
    if absent:
        raise RunbookError(f"{restored.label} に {', '.join(absent)} の行（TABLE DATA）がありません",
                           "バックアップの時点でなかったテーブルか、名前が違います。"
                           "稼働中の DB は変更していません")
    expected = restored.counts or {}
    labels = [label for label in sorted(tables) if expected.get(label, -1) >= 0]
    asks = [Ask("SELECT count(*) FROM " + quote_label(label), restored.database) for label in labels]
    # the kit database's catalog with them (its next read), in the same exec
    *counted, catalog = pg.queries([*asks, Ask(CATALOG_AND_VERSION, restored.database)])
    restored.catalog = catalog_of(catalog)
    for label, answer in zip(labels, counted, strict=True):
        rows = int(answer[0][0])
        if rows != expected[label]:
            raise RunbookError(f"作業用 DB の {label} が {rows} 行で、バックアップ時の記録 "
                               f"{expected[label]} 行と一致しません",
                               "ファイルを invoke verify で確認。稼働中の DB は変更していません")


def fetch_rows(session: Session, table: Table, match: tuple[str, ...], columns: tuple[str, ...],
               values: Path, rows: Path) -> tuple[int, int, list[str]]:
    """The source's rows of ``table`` whose ``match`` columns equal one of the lines of
    ``values`` (COPY text), into the file ``rows`` (``columns``, COPY text), in the
    source's ``session`` (a temporary table of the values: the source database is
    never written to). Returns (rows found, values without a row, a few of those)."""
    wanted = "pg_temp.pgrunbook_wanted"
    session.execute(f"DROP TABLE IF EXISTS {wanted}; CREATE TEMP TABLE pgrunbook_wanted AS "
                    f"SELECT {columns_sql(match)} FROM {table.sql} WITH NO DATA;")
    session.copy_in(wanted, columns_sql(match), file_chunks(values))
    on = " AND ".join(f"t.{quote_ident(name)} = w.{quote_ident(name)}" for name in match)
    found = session.copy_to_file(f"SELECT {columns_sql(columns, 't')} FROM {table.sql} t "
                                 f"WHERE EXISTS (SELECT 1 FROM {wanted} w WHERE {on})", rows)
    label = " || ', ' || ".join(f"w.{quote_ident(name)}::text" for name in match)
    absent = session.rows(f"SELECT count(*), coalesce((array_agg({label}))[1:5]::text, '') FROM {wanted} w "
                          f"WHERE NOT EXISTS (SELECT 1 FROM {table.sql} t WHERE {on})")
    count = int(absent[0][0])
    return found, count, [absent[0][1]] if count else []
