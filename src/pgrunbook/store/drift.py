"""Content drift: is this backup of the same database, with about as much in it?

A dump of an emptied or recreated database is a perfectly valid file: every
other check passes. So each backup is compared with the previous good backup
of the same env and series (custom or plain):

* a table of the previous backup is missing;
* a table's rows fell by more than DRIFT_MAX_DROP percent (tables that had at
  least DRIFT_MIN_ROWS rows; small tables come and go);
* the total of all tables fell by more than DRIFT_MAX_DROP percent, or the
  database became nearly empty (1 % of the rows or less);
* the database identity changed: the cluster's system identifier
  (``pg_control_system()``), the database's OID or its creation time (the
  container or the database was recreated).

A backup that trips any of these is kept, marked ``"suspect": true`` in its
manifest with the findings (``"drift"``), and never trusted by retention.
``backup/marks.accept_drift`` records an operator's acknowledgement of an intended change.

``compare`` is pure (counts in, findings out) so that restore-replace can use
the same thresholds and wording to compare an archive with the live database.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from pgrunbook.core import worklog
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import now_iso
from pgrunbook.store import catalog

SUSPECT_EXIT_CODE = 3  # backup: done and kept, but its content looks wrong
NEARLY_EMPTY_PERCENT = 1

# kinds of finding
TABLE_MISSING = "table_missing"
TABLE_DROP = "table_drop"
TOTAL_DROP = "total_drop"
NEARLY_EMPTY = "nearly_empty"
IDENTITY = "identity"


@dataclass(frozen=True)
class Thresholds:
    max_drop_percent: int = 50  # 100 switches the row checks off (missing tables still count)
    min_rows: int = 100  # a table is judged only if it had at least this many rows

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(settings.drift_max_drop, settings.drift_min_rows)


@dataclass(frozen=True)
class Finding:
    kind: str
    message: str  # Japanese, one line, names the table and the numbers
    table: str | None = None
    before: int | str | None = None
    after: int | str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dropped_too_much(before: int, after: int, thresholds: Thresholds) -> bool:
    if thresholds.max_drop_percent >= 100 or before < max(1, thresholds.min_rows):
        return False
    return (before - after) * 100 > before * thresholds.max_drop_percent


def _percent(before: int, after: int) -> int:
    return round((before - after) * 100 / before) if before else 0


def compare(previous_counts: Mapping[str, int], incoming_counts: Mapping[str, int],
            thresholds: Thresholds) -> list[Finding]:
    """What looks wrong in ``incoming`` compared with ``previous``.

    Both map ``"schema.table"`` to its row count; a count below 0 means "not
    counted" (ROW_COUNTS=false): the table's presence is still compared. New
    tables and growth are never findings. Order: missing tables, per-table
    drops (largest first), then the total.
    """
    findings: list[Finding] = []
    limit = thresholds.max_drop_percent
    for table in sorted(set(previous_counts) - set(incoming_counts)):
        before = previous_counts[table]
        had = f"{before:,} 行あった" if before >= 0 else "行数は不明"
        findings.append(Finding(TABLE_MISSING, f"テーブル {table} がなくなりました（{had}）",
                                table, before if before >= 0 else None, None))
    drops = []
    for table in sorted(set(previous_counts) & set(incoming_counts)):
        before, after = previous_counts[table], incoming_counts[table]
        if before >= 0 and after >= 0 and _dropped_too_much(before, after, thresholds):
            drops.append(Finding(
                TABLE_DROP,
                f"{table}: {before:,} 行 → {after:,} 行（{_percent(before, after)}% 減、上限 {limit}%）",
                table, before, after))
    findings += sorted(drops, key=lambda f: (-(int(f.before or 0) - int(f.after or 0)), f.table or ""))
    known = [t for t in previous_counts if previous_counts[t] >= 0]
    if known and all(count >= 0 for count in incoming_counts.values()):
        before_total = sum(previous_counts[t] for t in known)
        after_total = sum(max(0, c) for c in incoming_counts.values())
        nearly_empty = (limit < 100 and before_total >= max(1, thresholds.min_rows)
                        and after_total * 100 <= before_total * NEARLY_EMPTY_PERCENT)
        if nearly_empty:
            findings.append(Finding(NEARLY_EMPTY, f"DB がほぼ空です: 全テーブルの合計 {before_total:,} 行 → "
                                    f"{after_total:,} 行", None, before_total, after_total))
        elif _dropped_too_much(before_total, after_total, thresholds):
            findings.append(Finding(
                TOTAL_DROP, f"全テーブルの合計: {before_total:,} 行 → {after_total:,} 行"
                f"（{_percent(before_total, after_total)}% 減、上限 {limit}%）",
                None, before_total, after_total))
    return findings


IDENTITY_FIELDS = (
    ("system_identifier", "クラスタのシステム識別子",
     "コンテナかボリュームが作り直された（initdb し直した）可能性"),
    ("database_oid", "DB の OID", "DB が DROP / CREATE し直された可能性"),
    ("database_created", "DB の作成時刻", "DB が作り直された可能性"),
)


DATABASE_FIELDS = ("database_oid", "database_created")


def compare_identity(previous: Mapping[str, Any] | None,
                     incoming: Mapping[str, Any] | None,
                     ignore: Iterable[str] = ()) -> list[Finding]:
    """A different database: the first identity field known on both sides that differs
    (a new cluster also has a new OID and creation time: one finding says it).
    ``ignore`` names fields whose change is explained (a logged restore-replace)."""
    if not previous or not incoming:
        return []
    skipped = set(ignore)
    for key, label, meaning in IDENTITY_FIELDS:
        if key in skipped:
            continue
        before, after = previous.get(key), incoming.get(key)
        if before and after and str(before) != str(after):
            return [Finding(IDENTITY, f"別のデータベースです: {label} {before} → {after}（{meaning}）",
                            None, str(before), str(after))]
    return []


def counts_of_tables(tables: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """The manifest's ``tables`` list -> ``{"schema.table": rows}`` (-1: not counted)."""
    counts = {}
    for table in tables:
        try:
            counts[f"{table['schema']}.{table['name']}"] = int(table.get("rows", -1))
        except (KeyError, TypeError, ValueError):
            continue
    return counts


def describe(findings: Iterable[Finding | Mapping[str, Any]]) -> list[str]:
    return [f.message if isinstance(f, Finding) else str(f.get("message", "")) for f in findings]


# ---- the manifest's drift block -----------------------------------------------------


def is_suspect(manifest: Mapping[str, Any] | None) -> bool:
    """Marked suspect and not accepted since."""
    return bool(manifest) and bool(manifest.get("suspect"))


def consistent(backup: catalog.BackupFile, manifest: Mapping[str, Any] | None, env: str) -> bool:
    return (bool(manifest) and manifest.get("env") == env and manifest.get("file") == backup.name
            and catalog.read_checksum(backup.path) == manifest.get("sha256"))


def baseline(settings: Settings, fmt: str) -> tuple[str, dict[str, Any]] | None:
    """The previous good backup of this env and series: kit-made, consistent, not suspect,
    and not dated in the future (a clock that was ahead: it would stand for "the last one"
    for months, and a copy from another host would make every new backup look wrong)."""
    backups = [b for b in catalog.backups_in(settings.backup_dir, settings.backup_prefix)
               if b.env == settings.env and b.format == fmt and not b.legacy]
    now = datetime.now()
    for backup in reversed(backups):
        manifest = backup.manifest()
        if catalog.ahead_of(backup, manifest, now) is not None:
            continue
        if consistent(backup, manifest, settings.env) and not is_suspect(manifest):
            assert manifest is not None
            return backup.name, manifest
    return None


@dataclass(frozen=True)
class Swap:
    """The kit's own logged swap of the env's database (restore-replace, restore-rollback)."""

    text: str
    identity: Mapping[str, Any] | None = None  # what it swapped in (logged since issue 14)


def assess(previous: tuple[str, Mapping[str, Any]] | None, tables: list[dict[str, Any]],
           identity: Mapping[str, Any] | None, thresholds: Thresholds,
           replaced_since: Callable[[], Swap | None] | None = None) -> dict[str, Any]:
    """The manifest's ``drift`` block for a new backup.

    ``replaced_since`` is asked (only when the identity changed) whether the kit
    itself swapped the database in since the previous backup: then a new OID or
    creation time is expected, and so is a new cluster (a move to another server
    or major by restore-replace) when the swap logged exactly the identity seen
    now. The rows and tables are compared all the same.
    """
    block: dict[str, Any] = {"checked_at": now_iso(), "thresholds": asdict(thresholds)}
    if previous is None:
        return {**block, "status": "first", "compared_with": None, "findings": []}
    name, manifest = previous
    findings = compare_identity(manifest.get("identity"), identity)
    swap = replaced_since() if findings and replaced_since is not None else None
    if swap and (not compare_identity(manifest.get("identity"), identity, DATABASE_FIELDS)
                 or _same_database(swap.identity, identity)):
        block["identity_change_explained_by"] = swap.text
        findings = []
    findings += compare(counts_of_tables(manifest.get("tables") or []), counts_of_tables(tables),
                        thresholds)
    return {**block, "status": "suspect" if findings else "ok", "compared_with": name,
            "findings": [f.as_dict() for f in findings]}


def _same_database(swapped_in: Mapping[str, Any] | None, seen: Mapping[str, Any] | None) -> bool:
    """The database backed up now is the one the swap logged: every field known on
    both sides, the cluster's and the database's, equal."""
    if not swapped_in or not seen:
        return False
    known = [key for key, _, _ in IDENTITY_FIELDS if swapped_in.get(key) and seen.get(key)]
    return "system_identifier" in known and "database_oid" in known \
        and all(str(swapped_in[key]) == str(seen[key]) for key in known)


SWAP_TASKS = ("restore-replace", "restore-rollback")


def replaced_since(settings: Settings, previous: Mapping[str, Any]) -> Swap | None:
    """The kit's own logged swap of this env's database after ``previous`` was taken."""
    try:
        since = datetime.fromisoformat(str(previous.get("finished_at")))
    except ValueError:
        return None
    records, _ = worklog.read_trusted(settings.worklog_path)
    for record in reversed(records):
        if record.get("task") not in SWAP_TASKS or record.get("result") != "ok" \
                or record.get("env") != settings.env:
            continue
        try:
            when = datetime.fromisoformat(str(record.get("time")))
        except ValueError:
            continue
        if when >= since:
            identity = record.get("identity")
            return Swap(f"{record['task']} {record['time']} ({record.get('operator')})",
                        identity if isinstance(identity, Mapping) else None)
    return None


# Identity of the cluster and the database, without failing for a role that may not
# call pg_control_system() or pg_stat_file() (then that field is null).
# EXECUTE of a function is checked when the query starts, whatever branch of a
# CASE would call it: the privileged calls run through query_to_xml, only when granted
IDENTITY_QUERY = """
SELECT json_build_object(
  'system_identifier', (xpath('/row/v/text()', query_to_xml(
      CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
           THEN 'SELECT system_identifier::text AS v FROM pg_control_system()'
           ELSE 'SELECT NULL::text AS v' END, false, true, '')))[1]::text,
  'database_oid', d.oid::text,
  'database_created', (xpath('/row/v/text()', query_to_xml(
      CASE WHEN has_function_privilege('pg_stat_file(text, boolean)', 'EXECUTE')
           THEN format('SELECT to_char((pg_stat_file(%L, true)).modification AT TIME ZONE %L, '
                       '%L) AS v', 'base/' || d.oid || '/PG_VERSION', 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
           ELSE 'SELECT NULL::text AS v' END, false, true, '')))[1]::text)
FROM pg_database d WHERE d.datname = current_database()
"""


def database_identity(pg: Any) -> dict[str, Any]:
    """``{system_identifier, database_oid, database_created}`` of the env's database."""
    rows = pg.query(IDENTITY_QUERY)
    return json.loads(rows[0][0]) if rows and rows[0] else {}
