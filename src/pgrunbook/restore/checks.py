"""Checks after a restore (the runbook's 動作確認): schemas, row counts, Prisma state."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pgrunbook.infra.postgres import (
    EXACT_ROWS,
    USER_TABLES_FROM,
    Ask,
    Postgres,
    TableCount,
    quote_label,
)
from pgrunbook.restore.source import Source


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
    return with_prisma_state(pg, summary)


def with_prisma_state(pg: Postgres, summary: DatabaseSummary) -> DatabaseSummary:
    """Prisma's migration state, when the database has its table."""
    database = summary.database
    prisma = [name for name in summary.tables if name.endswith("._prisma_migrations")]
    if prisma:
        table = quote_label(prisma[0])
        latest, problems = pg.queries([
            Ask(f"SELECT migration_name FROM {table} WHERE finished_at IS NOT NULL "
                "AND rolled_back_at IS NULL ORDER BY finished_at DESC LIMIT 1", database),
            Ask(f"SELECT migration_name, CASE WHEN rolled_back_at IS NOT NULL THEN 'rolled back' "
                f"ELSE 'failed' END FROM {table} WHERE rolled_back_at IS NOT NULL "
                "OR finished_at IS NULL ORDER BY started_at", database)])
        summary.prisma_latest = latest[0][0] if latest else "（なし）"
        summary.prisma_problems = [f"{name}（{state}）" for name, state in problems]
    return summary


# A database nobody has written to since it was restored: its tables' cumulative
# statistics count exactly the rows the restore inserted, none updated or deleted,
# and their files (relfilenode) are the ones the restore made (a TRUNCATE or a
# rewrite makes new ones). One round trip, no count(*) (prestage.py).
UNTOUCHED = """
SELECT 'setting', 'checkpoint_timeout', '',
       extract(epoch FROM current_setting('checkpoint_timeout')::interval)::bigint, 0, 0
UNION ALL
SELECT 'setting', 'wal_lsn', pg_current_wal_lsn()::text, 0, 0, 0
UNION ALL
SELECT 'setting', 'checkpoint_redo', coalesce((xpath('/row/v/text()', query_to_xml(
         CASE WHEN has_function_privilege('pg_control_checkpoint()', 'EXECUTE')
              THEN 'SELECT redo_lsn::text AS v FROM pg_control_checkpoint()'
              ELSE 'SELECT NULL::text AS v' END, false, true, '')))[1]::text, ''), 0, 0, 0
UNION ALL
SELECT 'schema', nspname, '', 0, 0, 0 FROM pg_namespace
WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
UNION ALL
SELECT 'table', n.nspname, c.relname, pg_stat_get_tuples_inserted(c.oid),
       pg_stat_get_tuples_updated(c.oid) + pg_stat_get_tuples_deleted(c.oid), c.relfilenode""" \
    + USER_TABLES_FROM + "ORDER BY 1, 2, 3"


@dataclass(frozen=True)
class Untouched:
    """What UNTOUCHED read of a restored database."""

    schemas: list[str]
    inserted: dict[str, int]  # table -> rows inserted since the statistics began
    changed: dict[str, int]  # table -> rows updated or deleted
    files: str  # files_digest of the tables' files
    checkpoint_timeout: int = 300  # seconds: the server writes out what it holds within twice that
    wal_lsn: str = ""  # where the server's WAL is now (a mark keeps it: see written_out)
    checkpoint_redo: str = ""  # where the last checkpoint began ("": not allowed to ask)

    def verdict(self, expected: dict[str, int] | None, files: str) -> str:
        """"untouched": every table holds exactly the rows the restore inserted, none
        updated or deleted, in the files recorded then (``files``); "written": a row or a
        table was added, changed or removed since, or a table rewritten (TRUNCATE); else
        "unknown" (no record to compare with, or statistics reset by a crash or by hand)."""
        if not expected or not files:
            return "unknown"
        if files != self.files or set(self.inserted) != set(expected) or any(self.changed.values()) \
                or any(self.inserted[table] > rows for table, rows in expected.items()):
            return "written"
        return "untouched" if self.inserted == expected else "unknown"

    def summary(self, database: str, expected: dict[str, int]) -> DatabaseSummary:
        """The database's summary when untouched: the rows are ``expected``."""
        return DatabaseSummary(database, sorted(set(self.schemas) | {t.split(".", 1)[0] for t in expected}),
                               dict(expected))

    def written_out(self, marked_lsn: str, marked_at: float, now: float) -> bool:
        """Has the server written out a database marked at WAL position ``marked_lsn``
        (UNIX time ``marked_at``)? Yes when the last checkpoint began after it; without
        the right to ask (or an older mark), after twice checkpoint_timeout (a checkpoint
        starts within one and ends within the next)."""
        if self.checkpoint_redo and marked_lsn:
            return lsn_number(self.checkpoint_redo) > lsn_number(marked_lsn)
        return now - marked_at > 2 * self.checkpoint_timeout


def lsn_number(lsn: str) -> int:
    """'16/B374D848' -> a number that orders WAL positions."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low or "0", 16)


def files_digest(files: list[tuple[str, str, str]]) -> str:
    """(schema, table, relfilenode) of every table, as a short digest for a mark."""
    text = ",".join(f"{schema}.{name}:{node}" for schema, name, node in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_untouched(pg: Postgres, database: str) -> Untouched:
    return untouched_from(pg.query(UNTOUCHED, database))


def untouched_from(rows: list[list[str]]) -> Untouched:
    """UNTOUCHED's answer."""
    tables = [row for row in rows if row[0] == "table"]
    settings = {row[1]: (row[2], int(row[3])) for row in rows if row[0] == "setting"}
    return Untouched([row[1] for row in rows if row[0] == "schema"],
                     {f"{row[1]}.{row[2]}": int(row[3]) for row in tables},
                     {f"{row[1]}.{row[2]}": int(row[4]) for row in tables},
                     files_digest([(row[1], row[2], row[5]) for row in tables]),
                     settings["checkpoint_timeout"][1], settings["wal_lsn"][0],
                     settings["checkpoint_redo"][0])


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
