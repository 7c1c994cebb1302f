"""``restore-diff``: what a restore would change, changing nothing. Exit codes as
diff(1): 0 the same, 1 different, 2 trouble.

Without ``--table``, the whole database (``DatabaseDiff``): tables only in the
backup or only in live, row counts per table, columns, owners and privileges.
From a file, the backup's definitions are restored (no rows) into a kit
database to be compared (``rowsource.from_archive``, ``Extract(schema_only=True)``) and its
row counts are the manifest's; from a PITR copy, everything is asked of the
copy's server. ``restore-replace`` shows the same summary in its banner, from
what it already knows without restoring anything (``quick``): the archive's
table of contents and manifest against the live database's statistics.

With ``--table``: the rows, by key (``rowdiff``), with a few keys of each kind.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import file_chunks
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.framing import answered
from pgrunbook.infra.postgres import EXACT_ROWS, TABLE_ROW_COUNTS, USER_TABLES_FROM, Postgres
from pgrunbook.infra.session import stream_lines
from pgrunbook.restore import privileges
from pgrunbook.restore.guards import check_versions
from pgrunbook.restore.partial import APPLICATION, PartialOptions
from pgrunbook.restore.rowdiff import Selection, TableDiff, check_where, compare, hashing_major
from pgrunbook.restore.rowsource import (
    SORT_OPTIONS,
    Extract,
    RowSource,
    from_archive,
    parse_toc_line,
    toc_label,
)
from pgrunbook.restore.source import Source, inspect_with_facts
from pgrunbook.restore.tables import Catalog, Table, find_tables, read_catalog, row_key

SHOWN = 10  # lines of each kind in the text output (all of them in --format=json)
EXACT_BELOW = 100_000  # the replace's banner counts the live rows of smaller tables (estimates above)


@dataclass
class DatabaseDiff:
    only_backup: list[str] = field(default_factory=list)
    only_live: list[str] = field(default_factory=list)
    rows: list[tuple[str, int, int]] = field(default_factory=list)  # table, backup, live
    columns: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    privileges: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def different(self) -> bool:
        return bool(self.only_backup or self.only_live or self.rows or self.columns or self.owners
                    or self.privileges)

    def lines(self, shown: int = SHOWN) -> list[str]:
        def some(items: list[str]) -> str:
            more = f" …（ほか {len(items) - shown}）" if len(items) > shown else ""
            return ", ".join(items[:shown]) + more

        lines = []
        if self.only_backup:
            lines.append(f"バックアップにだけあるテーブル（その後に削除）: {some(self.only_backup)}")
        if self.only_live:
            lines.append(f"稼働中の DB にだけあるテーブル（その後に作成）: {some(self.only_live)}")
        if self.rows:
            lines.append("行数が違うテーブル（バックアップ → 稼働中）: " + some(
                [f"{name} {backup} → {live}（{live - backup:+d}）" for name, backup, live in self.rows]))
        for kind, items in (("列", self.columns), ("所有者（戻すと）", self.owners),
                            ("権限（戻すと）", self.privileges)):
            if items:
                lines.append(f"{kind}の違い: {some(items)}")
        if not self.different:
            lines.append("テーブル・行数・列・所有者・権限に違いはありません")
        return lines + [f"（{note}）" for note in self.notes]

    def as_dict(self) -> dict[str, Any]:
        return {"only_backup": self.only_backup, "only_live": self.only_live,
                "rows": [{"table": t, "backup": b, "live": live} for t, b, live in self.rows],
                "columns": self.columns, "owners": self.owners, "privileges": self.privileges,
                "notes": self.notes}


def _counts(pg: Postgres, database: str) -> dict[str, int]:
    return {f"{schema}.{name}": int(rows) for schema, name, rows in pg.query(TABLE_ROW_COUNTS, database)}


def _row_differences(backup: dict[str, int] | None, live: dict[str, int]) -> list[tuple[str, int, int]]:
    if not backup:
        return []
    return [(name, backup[name], live[name]) for name in sorted(backup.keys() & live.keys())
            if backup[name] >= 0 and backup[name] != live[name]]


def _columns(backup: Catalog, live: Catalog) -> list[str]:
    found = []
    for table in sorted(live.tables.values(), key=lambda t: t.label):
        other = backup.named(table.label)
        if other is None:
            continue
        theirs = {c.name: c for c in other.columns}
        ours = {c.name: c for c in table.columns}
        found += [f"{table.label}.{name}（稼働中にだけ）" for name in ours if name not in theirs]
        found += [f"{table.label}.{name}（バックアップにだけ）" for name in theirs if name not in ours]
        found += [f"{table.label}.{name} の型 {theirs[name].type} → {ours[name].type}"
                  for name in ours if name in theirs and theirs[name].type != ours[name].type]
    return found


def whole_database(pg: Postgres, settings: Settings, source: RowSource) -> DatabaseDiff:
    """Everything of the module docstring, asked of both servers."""
    live, backup = read_catalog(pg, settings.db_name), source.tables()
    names = {t.label for t in live.tables.values()}
    theirs = {t.label for t in backup.tables.values()}
    result = DatabaseDiff(sorted(theirs - names), sorted(names - theirs))
    live_counts = _counts(pg, settings.db_name)
    if source.schema_only:
        backup_counts = source.counts
        if not backup_counts:
            result.notes.append("バックアップのマニフェストに行数がないため、行数は比べていません")
    else:
        backup_counts = _counts(source.pg, source.database)
    result.rows = _row_differences(backup_counts, live_counts)
    result.columns = _columns(backup, live)
    if source.owners_and_privileges:
        # as a replace says it: what the restore would change (live → backup)
        changes = privileges.differences(privileges.rights_of(pg, settings.db_name),
                                         privileges.rights_of(source.pg, source.database))
        result.owners = [line for line in changes if "の所有者" in line] if source.archive_owners else []
        result.privileges = ([line for line in changes if "の所有者" not in line]
                             if source.archive_privileges else [])
        for kept, what, option in ((source.archive_owners, "所有者", "--no-owner"),
                                   (source.archive_privileges, "権限", "--no-acl")):
            if not kept:
                result.notes.append(f"バックアップは {option} で作られているため{what}は比べていません"
                                    f"（置き換えは稼働中の DB の{what}を引き継ぎます）")
    else:
        result.notes.append("所有者・権限はバックアップから戻せなかったため比べていません")
    return result


@dataclass(frozen=True)
class LiveTables:
    """The live database's tables, one read: owner, rows (counted below EXACT_BELOW, else
    the statistics' estimate) and the estimate alone (the replace's shrink check)."""

    owners: dict[str, str]
    rows: dict[str, int]
    estimates: dict[str, int]


LIVE_TABLES = ("SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner), "
               f"CASE WHEN c.reltuples < {EXACT_BELOW} THEN {EXACT_ROWS} "
               "ELSE greatest(c.reltuples::bigint, pg_stat_get_live_tuples(c.oid)) END, "
               "greatest(c.reltuples::bigint, pg_stat_get_live_tuples(c.oid), 0)" + USER_TABLES_FROM)


def live_tables(pg: Postgres, database: str) -> LiveTables:
    rows = pg.query(LIVE_TABLES, database)
    return LiveTables({f"{schema}.{name}": owner for schema, name, owner, _rows, _estimate in rows},
                      {f"{schema}.{name}": int(count) for schema, name, _owner, count, _estimate in rows},
                      {f"{schema}.{name}": int(estimate) for schema, name, _owner, _rows, estimate in rows})


def quick(pg: Postgres, settings: Settings, source: Source,
          tables_now: LiveTables | None = None) -> DatabaseDiff:
    """The summary without restoring anything (restore-replace's banner): tables and
    owners from the archive's table of contents, rows from its manifest against the
    live database's rows (counted, or the statistics' estimate for a large table);
    columns and privileges are left to the checks the replace makes before it swaps.
    ``tables_now``: the live tables as already read (``live_tables``)."""
    now = tables_now or live_tables(pg, settings.db_name)
    live, live_owners = now.rows, now.owners
    backup_owners = _toc_owners(pg, source, set(live))
    tables = set(backup_owners) if backup_owners else set((source.table_counts() or {}).keys())
    result = DatabaseDiff(sorted(tables - live.keys()), sorted(live.keys() - tables) if tables else [])
    result.rows = _row_differences(source.table_counts(), live)
    result.owners = [f"TABLE {name} の所有者 {owner} → {backup_owners[name]}"
                     for name, owner in sorted(live_owners.items())
                     if backup_owners.get(name) not in (None, "", owner)
                     and not (source.manifest or {}).get("options", {}).get("no_owner")]
    result.notes.append(f"稼働中の行数は {EXACT_BELOW:,} 行以上のテーブルでは統計の推定値。"
                        "列・権限は切り替えの前に確かめます")
    return result


def _toc_owners(pg: Postgres, source: Source, live: set[str]) -> dict[str, str]:
    """Tables and their owners from ``pg_restore -l`` of a custom archive (stdin: it
    reads the table of contents only); a table ``live`` has is matched by its whole
    label (``toc_label``: names with blanks)."""
    if source.format != "custom":
        return {}
    lines: Iterable[str] | None = source.toc  # as the file's check read it: no second read
    if lines is None:
        # stops after the TOC; framed, asked again if lost (never "no tables, no owners")
        listing = pg.read(["pg_restore", "-l"], stdin=lambda: file_chunks(source.path))
        if not listing.ok:
            return {}
        lines = listing.stdout.decode("utf-8", "replace").splitlines()
    found = {}
    for line in lines:
        entry = parse_toc_line(line)
        if entry and entry[0] == "TABLE":
            label = toc_label(line, live)
            if label is None:
                found[f"{entry[1]}.{entry[2]}"] = re.sub(r".* ", "", line.strip())
            else:  # the owner: what follows "TABLE <schema> <name> "
                schema, name = label.split(".", 1)
                found[label] = line.strip().split(f" TABLE {schema} {name} ", 1)[1]
    return found


@dataclass
class DiffResult:
    database: DatabaseDiff | None = None
    tables: list[TableDiff] = field(default_factory=list)
    source: str = ""

    @property
    def different(self) -> bool:
        if self.database is not None:
            return self.database.different
        return any(t.different for t in self.tables)

    def lines(self) -> list[str]:
        head = [f"比較: {self.source} → 稼働中の DB"]
        if self.database is not None:
            return head + self.database.lines()
        return head + [line for table in self.tables for line in table.lines()]

    def as_json(self) -> str:
        body: dict[str, Any] = {"source": self.source, "different": self.different}
        if self.database is not None:
            body["database"] = self.database.as_dict()
        else:
            body["tables"] = [t.as_dict() for t in self.tables]
        return json.dumps(body, ensure_ascii=False, indent=2)


def table_rows(pg: Postgres, settings: Settings, source: RowSource, options: PartialOptions,
               console: Console) -> list[TableDiff]:
    """Each named table, backup against live, read-only on both sides."""
    where = check_where(options.where)
    live = read_catalog(pg, settings.db_name)
    found = []
    for table in find_tables(live, list(options.tables), "稼働中の DB "):
        key = row_key(table, options.key)
        other = source.tables().named(table.label)
        compared, notes = _common_columns(table, other, key, source.label)
        selection = Selection(table, key, compared, where, hashing_major(live.major),
                              _retyped(table, other, key) if other is not None else ())
        if selection.by_value:  # as the source hashes each column
            selection = selection.hashing_with(source.tables())
        if where:
            _check_where_on(pg, settings.db_name, selection, "稼働中の DB")
            _check_where_on(source.pg, source.database, selection, source.label)
        console.step(f"{table.label} をキー（{', '.join(selection.key)}）の順に比べます")

        def both_read(selection: Selection = selection) -> TableDiff:
            """Both streams, merged; read again, both, if the engine lost one (reads only)."""
            return compare(selection, stream_lines(source.pg, source.database, selection.stream_sql(),
                                                   APPLICATION, SORT_OPTIONS),
                           stream_lines(pg, settings.db_name, selection.stream_sql(), APPLICATION))

        result = answered(both_read)
        result.notes = notes
        found.append(result)
    return found


def _common_columns(table: Table, other: Table | None, key: tuple[str, ...],
                    label: str) -> tuple[tuple[str, ...], list[str]]:
    """The live table's written columns that the source's table has too (a column added or
    dropped since the backup is left out of the comparison, and said); refused when the
    source has no such table or lacks a column of the key."""
    if other is None:
        raise RunbookError(f"{label} に {table.label} がありません",
                           "バックアップの時点でなかったテーブルか、名前が違います", exit_code=2)
    theirs = {column.name for column in other.columns}
    lacking = [name for name in key if name not in theirs]
    if lacking:
        raise RunbookError(f"キーの列 {', '.join(lacking)} が {label} の {table.label} にありません"
                           "（バックアップの後に追加された列）",
                           "バックアップにもある列の組を --key に指定", exit_code=2)
    compared = tuple(column.name for column in table.written if column.name in theirs)
    ours = {column.name for column in table.columns}
    notes = [f"列 {column.name} は稼働中の DB にだけあるため比べていません"
             for column in table.written if column.name not in theirs]
    notes += [f"列 {column.name} はバックアップにだけあるため比べていません"
              for column in other.columns if column.name not in ours and not column.generated]
    return compared, notes


def _retyped(table: Table, other: Table, key: tuple[str, ...]) -> tuple[str, ...]:
    """The key columns whose type differs on the other side (text then, an integer live):
    each side's order of its own type would differ, their text orders alike."""
    theirs = {column.name: column.type for column in other.columns}
    return tuple(name for name in key if theirs.get(name, table.column(name).type) != table.column(name).type)


def _check_where_on(pg: Postgres, database: str, selection: Selection, side: str) -> None:
    """``--where`` planned on one side before any row is read: a column that side lacks or a
    wrong type is the operator's to fix, said in one line (not the server's error alone)."""
    try:
        pg.query(f"SELECT 1 FROM {selection.table.sql} WHERE {selection.selected_sql()} LIMIT 0", database)
    except RunbookError as error:
        if "ERROR:" not in error.message:  # a lost answer, a server gone: not the condition's fault
            raise
        raise RunbookError(f"--where={selection.where!r} は{side}の {selection.table.label} に使えません: "
                           f"{error.message}",
                           "両方（バックアップの時点と今）にある列で条件を書く", exit_code=2) from None


@contextlib.contextmanager
def _source_of(pg: Postgres, settings: Settings, options: PartialOptions, handed: RowSource | None,
               console: Console, entry: Entry) -> Iterator[RowSource]:
    if handed is not None:
        entry.file = handed.label
        entry.details.update(handed.details)
        yield handed
        return
    source, facts = inspect_with_facts(pg, settings, options.file, console)
    entry.file = str(source.path)
    check_versions(source, facts.version)
    if options.tables:
        live = read_catalog(pg, settings.db_name)
        labels = {t.label for t in find_tables(live, list(options.tables), "稼働中の DB ")}
        extract = Extract(source, labels, partitions=live.partitions_of(labels))
        with from_archive(pg, settings, facts, extract, console) as restored:
            entry.sha256 = restored.sha256
            yield restored
    else:
        with from_archive(pg, settings, facts, Extract(source, set(), schema_only=True), console) as restored:
            entry.sha256 = restored.sha256
            yield restored


def restore_diff(settings: Settings, options: PartialOptions, console: Console | None = None,
                 handed: RowSource | None = None) -> DiffResult:
    """Any failure is exit code 2 (diff(1)'s "trouble")."""
    console = console or Console(settings.secrets())
    entry = Entry("restore-diff", settings.env, settings.db_name, settings.db_container)
    entry.details.update(tables=list(options.tables), where=options.where)
    try:
        with recorded(settings.worklog_path, entry, console.redact):
            pg = Postgres(discovery.db_container(settings), settings)
            result = DiffResult()
            with _source_of(pg, settings, options, handed, console, entry) as source:
                result.source = source.label
                if options.tables:
                    result.tables = table_rows(pg, settings, source, options, console)
                else:
                    result.database = whole_database(pg, settings, source)
            entry.details["different"] = result.different
            entry.details["counts"] = {t.table: t.counts for t in result.tables}
            return result
    except RunbookError as error:
        error.exit_code = 2
        raise
