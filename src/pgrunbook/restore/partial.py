"""``restore-partial``: rows of named tables put back from a backup (or a PITR copy)
into the live database, with the app running.

1. The rows come from a ``RowSource`` (``rowsource``): a kit database with only
   the named tables (and the tables their foreign keys reach) restored from the
   file, or a server handed over (``--as-of``, made above this area).
2. The preview, in a snapshot of the live database (a transaction that is
   rolled back): each named table merged with the backup by key
   (``rowdiff.compare``), the differing keys kept in files with the snapshot's
   ``version_sum`` of the selection; the backup's rows of those keys read from
   the source (``rowsource.fetch_rows``); then ``load_plan``: the rows loaded
   into temporary tables, the parent rows they need that live lacks (from the
   backup, as far as the foreign keys reach), the rows of other tables that
   reference rows to delete or to change (refused), the sequences to move up.
3. The confirmation (typed on a terminal, or ``--confirm=E``; ``PROTECTED``
   envs as for a replace).
4. The apply, one transaction: the locks (``putback.lock``); the selection's
   ``version_sum`` read again under them: another one means rows changed since
   the preview, and the kit refuses, showing the difference as it is now; else
   ``load_plan`` again from the preview's files (its parents and refusals must
   come out the same); the tables that only get parent rows locked as well; the
   undo file (before-image) saved and its sha256
   logged; the writes: deletes first, children first (a row coming back may
   need a unique value a deleted row holds), then table by table, parents
   first, the changed rows and the rows to add (a table that references itself:
   the changed rows' references to it after the rows to add, a changed row may point
   at one); the sequences;
   ``COMMIT``. A ``kill -9`` anywhere before the ``COMMIT`` leaves nothing applied.

Mode: ``missing`` inserts the rows deleted since the backup, ``changed`` also
reverts rows updated since, ``exact`` also deletes rows inserted since; all
within ``--where``. Generated columns are recomputed, key values are the
backup's, no sequence moves backwards (nothing of the archive's ``SEQUENCE
SET``), and the user triggers do not fire unless ``--fire-triggers``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pgrunbook.core import faults, journal
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.files import ensure_private_dir, file_chunks, fsync_directory, open_private, private_file
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, append_started, now_iso, operator, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.postgres import Postgres, quote_ident
from pgrunbook.infra.session import Session, stream_lines
from pgrunbook.restore import putback
from pgrunbook.restore.guards import Banner, check_versions, confirm, guard_environment, source_lines
from pgrunbook.restore.putback import DELETED, INSERTED, PARENT, UPDATED, UndoWriter
from pgrunbook.restore.rowdiff import (
    CHANGED,
    EXTRA,
    MISSING,
    Selection,
    TableDiff,
    check_where,
    compare,
    hashing_major,
)
from pgrunbook.restore.rowsource import SORT_OPTIONS, Extract, RowSource, fetch_rows, from_archive
from pgrunbook.restore.source import Source, inspect_with_facts
from pgrunbook.restore.tables import (
    Catalog,
    ForeignKey,
    Table,
    columns_sql,
    find_tables,
    read_catalog,
    refuse_row_security,
    row_hash,
    row_key,
    version_sum,
)

MODES = ("missing", "changed", "exact")
APPLICATION = "pgrunbook-partial"
UNDO_FOLDER = "partial"
KIND_WORDS = {INSERTED: "戻す（追加）", UPDATED: "戻す（更新）", DELETED: "削除", PARENT: "親の行を戻す"}


@dataclass(frozen=True)
class PartialOptions:
    """What ``restore-partial`` (and ``restore-diff --table``) are asked to do."""

    tables: tuple[str, ...]
    mode: str = "missing"
    where: str | None = None
    key: str | None = None
    fire_triggers: bool = False
    confirm_env: str | None = None
    approved_by: str | None = None
    file: str | None = None


@dataclass
class TablePlan:
    table: Table  # as the live database has it
    index: int
    selection: Selection | None  # a named table; None: only parent rows come back into it
    key: tuple[str, ...]
    diff: TableDiff | None = None
    rows: dict[str, int] = field(default_factory=lambda: {INSERTED: 0, UPDATED: 0, DELETED: 0, PARENT: 0})
    versions: str = ""  # the selection's version_sum in the preview's snapshot
    parent_examples: list[str] = field(default_factory=list)
    temps: dict[str, str] = field(default_factory=dict)  # kind -> temporary table

    @property
    def written(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.table.written)

    @property
    def writes(self) -> bool:
        return any(self.rows.values())

    def inserted_from(self) -> list[str]:
        return [self.temps[kind] for kind in (PARENT, INSERTED) if self.rows[kind]]

    def fresh(self) -> TablePlan:
        """The same merge result, before any parents or temporary tables (the apply's)."""
        return replace(self, rows={**self.rows, PARENT: 0}, parent_examples=[], temps={})


@dataclass
class Plan:
    mode: str
    tables: dict[int, TablePlan]
    blocked: list[str] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)
    digest: str = ""

    def counts(self) -> dict[str, dict[str, int]]:
        return {p.table.label: {kind: n for kind, n in p.rows.items() if n}
                for p in self.tables.values() if p.writes}

    @property
    def empty(self) -> bool:
        return not any(p.writes for p in self.tables.values())

    def lines(self) -> list[str]:
        lines = [line for plan in self.tables.values() if plan.diff for line in plan.diff.lines()]
        for plan in self.tables.values():
            if plan.writes:
                lines.append(f"  → {plan.table.label}: " + "、".join(
                    f"{KIND_WORDS[kind]} {n} 行" for kind, n in plan.rows.items() if n))
            if plan.rows[PARENT]:
                more = " …" if plan.rows[PARENT] > len(plan.parent_examples) else ""
                lines.append("    親の行（戻す行が参照し、稼働中の DB にない）: キー "
                             f"{' / '.join(plan.parent_examples)}{more}")
        lines += [f"  {line}" for line in self.sequences]
        lines += [f"  拒否: {line}" for line in self.blocked]
        if self.empty:
            lines.append(f"  戻す行はありません（--mode={self.mode}）")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "counts": self.counts(), "blocked": self.blocked,
                "sequences": self.sequences,
                "tables": [p.diff.as_dict() for p in self.tables.values() if p.diff is not None]}


def _compatible(live: Table, source: Catalog, label: str) -> None:
    """The backup's table has the live table's written columns, with their types."""
    other = source.named(live.label)
    if other is None:
        raise RunbookError(f"{label} に {live.label} がありません",
                           "戻せるのはバックアップにあるテーブルだけです")
    theirs = {column.name: column for column in other.columns}
    problems = []
    for column in live.written:
        found = theirs.get(column.name)
        if found is None:
            problems.append(f"列 {column.name} がバックアップにない")
        elif found.type != column.type:
            problems.append(f"列 {column.name} の型 {found.type} → 稼働中 {column.type}")
        elif found.generated:
            problems.append(f"列 {column.name} はバックアップでは生成列")
    only_backup = sorted(set(theirs) - {c.name for c in live.columns})
    problems += [f"列 {name} が稼働中の DB にない" for name in only_backup]
    if problems:
        raise Refused(f"{live.label} の列がバックアップ後に変わっています: {'; '.join(problems)}"
                      "（何も変更していません）",
                      "スキーマの変更をまたいで行は戻せません。restore-scratch で別 DB に戻し、"
                      "SQL で写す（手順書「一部だけ戻す」の手作業）")


def _file(folder: Path, what: str, index: int) -> Path:
    """The run's files: ``keys-missing``, ``keys-changed``, ``keys-extra`` (the merge's
    keys), ``rows-ins``, ``rows-upd``, ``rows-par`` (the backup's rows), ``wanted``."""
    return folder / f"{what}-{index}.copy"


class LiveScan:
    """Live's side of the preview: in a snapshot of ``session``'s own (REPEATABLE READ),
    each named table's stream (``Selection.stream_sql``) into a file, and its
    ``version_sum``. Started before the source is ready, it runs beside the source's
    restore (one core each) instead of after it."""

    def __init__(self, session: Session, selections: dict[int, Selection], folder: Path) -> None:
        self.session, self.selections, self.folder = session, selections, folder
        self.versions: dict[int, str] = {}
        self.selected: dict[int, int] = {}  # --where: how many keys it selects (in keys_path)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._scan, name="live-scan", daemon=True)
        self.thread.start()

    def _scan(self) -> None:
        try:
            self.session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ;")
            for oid, selection in self.selections.items():
                if selection.narrowable:  # the stream waits for the source's keys (merge_targets)
                    self.selected[oid] = self.session.copy_to_file(selection.selected_keys_sql(),
                                                                   self.keys_path(oid))
                else:
                    self.session.copy_to_file(selection.stream_sql(), self.path(oid))
                self.versions[oid] = self.session.rows(selection.versions_sql())[0][0]
        except BaseException as error:  # noqa: BLE001 - raised in the caller's thread by wait()
            self.error = error

    def path(self, oid: int) -> Path:
        return self.folder / f"live-{oid}.copy"

    def keys_path(self, oid: int) -> Path:
        return self.folder / f"live-keys-{oid}.copy"

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def lines(self, oid: int) -> Iterator[bytes]:
        with open(self.path(oid), "rb") as handle:
            for line in handle:
                yield line.rstrip(b"\n")


def selections_of(targets: list[Table], options: PartialOptions, major: int) -> dict[int, Selection]:
    """What the named tables' rows are compared on (a table without a key stops here),
    on a live server of ``major``."""
    where = check_where(options.where)
    found = {}
    for table in targets:
        key = row_key(table, options.key)
        found[table.oid] = Selection(table, key, tuple(c.name for c in table.written), where,
                                     hashing_major(major))
    return found


def merge_targets(scan: LiveScan, source: RowSource, source_session: Session, options: PartialOptions,
                  folder: Path, console: Console) -> dict[int, TablePlan]:
    """Each named table's backup rows merged with the scan's by key; the keys that
    differ go to files."""
    scan.wait()
    plans: dict[int, TablePlan] = {}
    for oid, selection in list(scan.selections.items()):
        table = selection.table
        catalog = _compatible_target(table, source)
        hashed = selection.hashing_with(catalog)
        backup = _narrowed(scan, source_session, hashed, oid) if hashed.narrowable else None
        if backup is None:  # the whole table on both sides
            if hashed is not selection or hashed.narrowable:  # live's file holds another stream (the
                # source hashes a column otherwise, or too many keys): read again, in the scan's
                # snapshot (its transaction is still open)
                scan.session.copy_to_file(hashed.stream_sql(), scan.path(oid))
            backup = stream_lines(source.pg, source.database, hashed.stream_sql(), APPLICATION, SORT_OPTIONS)
        selection = scan.selections[oid] = hashed
        plan = TablePlan(table, len(plans) + 1, selection, selection.key, versions=scan.versions[oid])
        plans[oid] = plan
        console.step(f"{table.label} をキー（{', '.join(selection.key)}）の順に比べます")
        handles = {kind: open_private(_file(folder, f"keys-{kind}", plan.index))
                   for kind in (MISSING, CHANGED, EXTRA)}

        def keep(kind: str, fields: list[bytes], handles: dict = handles) -> None:
            handles[kind].write(b"\t".join(fields) + b"\n")

        try:
            plan.diff = compare(selection, backup, scan.lines(oid), keep)
        finally:
            for handle in handles.values():
                handle.close()
        plan.rows[INSERTED] = plan.diff.counts[MISSING]
        plan.rows[UPDATED] = plan.diff.counts[CHANGED] if options.mode in ("changed", "exact") else 0
        plan.rows[DELETED] = plan.diff.counts[EXTRA] if options.mode == "exact" else 0
    return plans


# --where: up to this many keys selected (both sides together), each side reads only its selected
# rows and the rows of the other side's keys; beyond it, the whole table, as without --where
NARROW_LIMIT = 100_000


def _narrowed(scan: LiveScan, source_session: Session, selection: Selection,
              oid: int) -> Iterator[bytes] | None:
    """The two streams of a ``--where`` (``Selection.narrowable``): the source's selected
    keys, then live's stream (into the scan's file, in its snapshot) of the rows of its own
    selected keys and of the source's, and the source's stream (returned) the other way
    round. A key is compared when either side selects it, as in the whole streams: nothing
    else of the table is read, hashed or sorted. None beyond ``NARROW_LIMIT`` keys."""
    theirs = scan.folder / f"source-keys-{oid}.copy"
    selected = source_session.copy_to_file(selection.selected_keys_sql(), theirs)
    if selected + scan.selected[oid] > NARROW_LIMIT:
        return None
    live_keys = _keys_table(scan.session, selection, oid, scan.keys_path(oid), theirs)
    scan.session.copy_to_file(selection.stream_sql(live_keys), scan.path(oid))
    source_keys = _keys_table(source_session, selection, oid, theirs, scan.keys_path(oid))
    return source_session.copy_out(selection.stream_sql(source_keys))


def _keys_table(session: Session, selection: Selection, oid: int, own: Path, other: Path) -> str:
    """A temporary table in ``session`` of the keys in the files ``own`` (selected on this
    side) and ``other`` (selected on the other side), each line COPY text of the key."""
    name = f"pg_temp.pgrunbook_keys_{oid}"
    key = columns_sql(selection.key)
    session.execute(f"DROP TABLE IF EXISTS {name}; CREATE TEMP TABLE pgrunbook_keys_{oid} AS "
                    f"SELECT {key}, true AS pgrunbook_own FROM {selection.table.sql} WITH NO DATA; "
                    f"ALTER TABLE {name} ALTER COLUMN pgrunbook_own SET DEFAULT true;")
    session.copy_in(name, key, file_chunks(own))
    session.execute(f"ALTER TABLE {name} ALTER COLUMN pgrunbook_own SET DEFAULT false;")
    session.copy_in(name, key, file_chunks(other))
    session.execute(f"ANALYZE {name};")
    return name


def _compatible_target(table: Table, source: RowSource) -> Catalog:
    _compatible(table, source.tables(), source.label)
    return source.tables()


def fetch_backup_rows(source_session: Session, source: RowSource, plans: dict[int, TablePlan],
                      folder: Path) -> None:
    """The backup's rows of the keys to insert or change, from the source."""
    for plan in plans.values():
        for kind, keys in ((INSERTED, MISSING), (UPDATED, CHANGED)):
            if not plan.rows[kind]:
                continue
            found, absent, _examples = fetch_rows(source_session, plan.table, plan.key, plan.written,
                                                  _file(folder, f"keys-{keys}", plan.index),
                                                  _file(folder, f"rows-{kind}", plan.index))
            if found != plan.rows[kind] or absent:
                raise RunbookError(f"{source.label} から {plan.table.label} の行を {found} 行しか読めません"
                                   f"（予定 {plan.rows[kind]} 行）", "再実行。稼働中の DB は変更していません")


def load_plan(run: Run, session: Session, source_session: Session, targets: dict[int, TablePlan]) -> Plan:
    """The rows to write, loaded into ``session``'s temporary tables from the run's files;
    the parents they need; what blocks; sequences; the digest."""
    source, live, folder, mode = run.source, run.live, run.folder, run.options.mode
    plans: dict[int, TablePlan] = {}

    def plan_of(table: Table, key: tuple[str, ...]) -> TablePlan:
        if table.oid not in plans:
            known = targets.get(table.oid)
            plan = known.fresh() if known else TablePlan(table, len(targets) + len(plans) + 1, None, key)
            if known is None:
                _compatible_target(table, source)
            plan.temps = {kind: putback.create_temp(session, kind, plan.index, table,
                                                    plan.key if kind == DELETED else plan.written)
                          for kind in (INSERTED, UPDATED, DELETED, PARENT)}
            plans[table.oid] = plan
        return plans[table.oid]

    for target in targets.values():
        plan = plan_of(target.table, target.key)
        for kind, path in ((INSERTED, _file(folder, f"rows-{INSERTED}", plan.index)),
                           (UPDATED, _file(folder, f"rows-{UPDATED}", plan.index)),
                           (DELETED, _file(folder, f"keys-{EXTRA}", plan.index))):
            if plan.rows[kind]:
                columns = plan.key if kind == DELETED else plan.written
                session.copy_in(plan.temps[kind], columns_sql(columns), file_chunks(path))
    _bring_parents(run, session, source_session, plans, plan_of)
    result = Plan(mode, plans)
    result.blocked = _blocked(session, live, plans)
    for plan in plans.values():
        if plan.inserted_from():
            result.sequences += putback.advance_sequences(session, plan.table, plan.inserted_from(),
                                                          apply=False)
    result.digest = _digest(session, result)
    return result


def _bring_parents(run: Run, session: Session, source_session: Session, plans: dict[int, TablePlan],
                   plan_of: Callable[..., TablePlan]) -> None:
    """Parent rows the rows to write need and live lacks, from the backup, as far as the
    foreign keys reach (a parent brought back may need its own parents)."""
    source, live, folder, console = run.source, run.live, run.folder, run.console
    pending = [oid for oid, plan in plans.items() if plan.rows[INSERTED] or plan.rows[UPDATED]]
    while pending:
        child = plans[pending.pop(0)]
        for fk in child.table.foreign_keys:
            parent_table = live.tables.get(fk.parent)
            if parent_table is None:
                continue
            wanted = _wanted_parents(session, child, fk, parent_table, plans.get(fk.parent), folder)
            if wanted is None:
                continue
            parent = plan_of(parent_table, parent_table.primary_key or fk.parent_columns)
            rows = _file(folder, f"rows-{PARENT}", parent.index)
            found, absent, examples = fetch_rows(source_session, parent_table, fk.parent_columns,
                                                 parent.written, wanted, rows)
            if absent:
                raise Refused(f"{child.table.label} の戻す行が参照する {parent_table.label} の行"
                              f"（{', '.join(examples)}）が稼働中の DB にもバックアップ（{source.label}）にも"
                              "ありません（何も変更していません）",
                              "参照先の行を先に戻すか、--where で対象を絞る")
            session.copy_in(parent.temps[PARENT], columns_sql(parent.written), file_chunks(rows))
            parent.rows[PARENT] += found
            console.step(f"{child.table.label} の戻す行が参照する {parent_table.label} の行 {found} 行も"
                         "戻します")
            if parent_table.oid not in pending:
                pending.append(parent_table.oid)
    for plan in plans.values():
        if not plan.rows[PARENT]:
            continue
        label = ", ".join(f"{quote_ident(k)}::text" for k in plan.key)
        keys = session.rows(f"SELECT concat_ws(', ', {label}) FROM {plan.temps[PARENT]} ORDER BY 1 LIMIT 5")
        plan.parent_examples = [row[0] for row in keys]
        if plan.table.primary_key:
            clash = session.rows(
                f"SELECT count(*) FROM {plan.temps[PARENT]} p WHERE EXISTS (SELECT 1 FROM {plan.table.sql} t "
                f"WHERE {putback.key_match(plan.table.primary_key, 't', 'p')})")
            if int(clash[0][0]):
                raise Refused(
                    f"{plan.table.label} の親の行 {clash[0][0]} 行は、同じキーの行が稼働中の DB に別の内容で"
                    "あります（何も変更していません）",
                    f"先に --table={plan.table.label} --mode=changed で親の行を戻すか、手作業で直す")


def _wanted_parents(session: Session, child: TablePlan, fk: ForeignKey, parent: Table,
                    known: TablePlan | None, folder: Path) -> Path | None:
    """The values ``child``'s rows to write reference through ``fk`` that live (its
    ``parent`` table) lacks (nor is already bringing back), in a file; None when there
    are none."""
    columns, parent_columns = fk.columns, fk.parent_columns
    kinds = [kind for kind in (INSERTED, UPDATED, PARENT) if child.rows[kind]]
    if not kinds:
        return None
    renamed = ", ".join(f"{quote_ident(c)} AS {quote_ident(p)}" for c, p in zip(columns, parent_columns,
                                                                                 strict=True))
    union = " UNION ALL ".join(f"SELECT {renamed} FROM {child.temps[kind]}" for kind in kinds)
    match = " AND ".join(f"x.{quote_ident(p)} = v.{quote_ident(p)}" for p in parent_columns)
    places = [parent.sql] + ([known.temps[INSERTED], known.temps[PARENT]] if known else [])
    present = " ".join(f"AND NOT EXISTS (SELECT 1 FROM {name} x WHERE {match})" for name in places)
    not_null = " AND ".join(f"v.{quote_ident(p)} IS NOT NULL" for p in parent_columns)
    path = _file(folder, "wanted", child.index)
    count = session.copy_to_file(f"SELECT DISTINCT {columns_sql(parent_columns, 'v')} "
                                 f"FROM ({union}) AS v WHERE {not_null} {present}", path)
    return path if count else None


def _blocked(session: Session, live: Catalog, plans: dict[int, TablePlan]) -> list[str]:
    """Rows of other tables that reference rows to delete (``exact``) or whose
    referenced values a change would alter: refused, never cascaded."""
    blocked = []
    for plan in plans.values():
        if not (plan.rows[DELETED] or plan.rows[UPDATED]):
            continue
        for child, fk in live.children_of(plan.table.oid):
            referenced = columns_sql(fk.parent_columns, "t")
            queries = []
            if plan.rows[DELETED]:
                queries.append(putback.Referenced(
                    f"SELECT {referenced} FROM {plan.table.sql} t JOIN {plan.temps[DELETED]} d "
                    f"ON {putback.key_match(plan.key, 't', 'd')}", f"{plan.table.label} の削除する行"))
            if plan.rows[UPDATED] and set(fk.parent_columns) <= set(plan.written):
                changed = " OR ".join(f"t.{quote_ident(c)} IS DISTINCT FROM u.{quote_ident(c)}"
                                      for c in fk.parent_columns)
                queries.append(putback.Referenced(
                    f"SELECT {referenced} FROM {plan.table.sql} t JOIN {plan.temps[UPDATED]} u "
                    f"ON {putback.key_match(plan.key, 't', 'u')} WHERE {changed}",
                    f"{plan.table.label} の値を変える行"))
            own = plans.get(child.oid)
            exclude = own.temps[DELETED] if own and own.rows[DELETED] else None
            blocked += [line for parents in queries
                        if (line := putback.referencing(session, child, fk, parents, exclude,
                                                        own.key if own else child.primary_key))]
    return blocked


def _digest(session: Session, plan: Plan) -> str:
    """Equal digests: the same rows to write (the merges' digests), the same live rows
    they write over or delete, as they were (``version_sum``: a row changed since is
    another version, also one the selection's own sum does not cover, such as a row moved
    out of ``--where`` since the backup), the same parents and the same refusals."""
    digest = hashlib.sha256(plan.mode.encode())
    for table_plan in plan.tables.values():
        digest.update(f"\n{table_plan.table.label}".encode())
        if table_plan.diff is not None:
            digest.update(table_plan.diff.digest.encode())
        key = table_plan.key
        overwritten = [table_plan.temps[kind] for kind in (UPDATED, DELETED) if table_plan.rows[kind]]
        if overwritten:
            keys = " UNION ALL ".join(f"SELECT {columns_sql(key)} FROM {name}" for name in overwritten)
            versions = session.rows(f"SELECT {version_sum('t')} FROM {table_plan.table.sql} t WHERE EXISTS "
                                    f"(SELECT 1 FROM ({keys}) k WHERE {putback.key_match(key, 't', 'k')})")
            digest.update(versions[0][0].encode())
        if table_plan.rows[PARENT]:
            cols = columns_sql(key)
            for line in session.copy_out(f"SELECT {cols} FROM {table_plan.temps[PARENT]} ORDER BY {cols}"):
                digest.update(line + b"\n")
    for line in plan.blocked:
        digest.update(line.encode())
    return digest.hexdigest()


# ---- the run ----------------------------------------------------------------------------


def _targets(live: Catalog, options: PartialOptions) -> list[Table]:
    return find_tables(live, list(options.tables), "稼働中の DB ")


def _reach(live: Catalog, targets: list[Table]) -> set[str]:
    """The tables whose rows the source must hold: the named ones and every table their
    foreign keys reach (parents may have to come back)."""
    return {live.tables[oid].label for oid in live.parents_closure([t.oid for t in targets])}


WORK_FOLDER = re.compile(r"^\.work-(?P<host>.+)-(?P<pid>\d+)-(?P<started>\d+|None)-[a-z0-9_]+$")


@contextlib.contextmanager
def _work_folder(settings: Settings) -> Iterator[Path]:
    """A private folder beside the backups for the keys and rows in flight (removed after),
    named after its run's process (host, pid, start): a run killed leaves it, and only a
    folder whose process is gone is another run's to remove (``_remove_stale_undo_temporaries``)."""
    base = settings.backup_dir / UNDO_FOLDER
    ensure_private_dir(base)
    pid = os.getpid()
    owner = f"{socket.gethostname()}-{pid}-{journal.process_started(pid)}"
    folder = Path(tempfile.mkdtemp(prefix=f".work-{owner}-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Run:
    """One restore-partial: where the rows come from, the live catalog, the files."""

    pg: Postgres
    settings: Settings
    source: RowSource
    options: PartialOptions
    live: Catalog
    targets: list[Table]
    folder: Path
    console: Console

    def live_session(self) -> Session:
        return Session(self.pg, self.settings.db_name, APPLICATION)

    def source_session(self) -> Session:
        return Session(self.source.pg, self.source.database, APPLICATION)


def preview(run: Run, scan: LiveScan | None = None) -> Plan:
    """Step 2 of the module docstring: changes nothing. ``scan``: live's side already
    started (by ``restore_partial``, beside the source's restore), else read now."""
    with contextlib.ExitStack() as stack:
        if scan is None:
            session = stack.enter_context(run.live_session())
            scan = LiveScan(session, selections_of(run.targets, run.options, run.live.major), run.folder)
        source_session = stack.enter_context(run.source_session())
        targets = merge_targets(scan, run.source, source_session, run.options, run.folder, run.console)
        fetch_backup_rows(source_session, run.source, targets, run.folder)
        plan = load_plan(run, scan.session, source_session, targets)
        scan.session.execute("ROLLBACK;")
    return plan


@dataclass
class Applied:
    plan: Plan
    run: str
    undo: Path
    undo_sha256: str


def apply(run: Run, expected: Plan, entry: Entry) -> Applied:
    """Step 4 of the module docstring."""
    settings, options = run.settings, run.options
    guarded = [child for t in run.targets for child, _fk in run.live.children_of(t.oid)] \
        if options.mode != "missing" else []
    name = f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
    undo_path = settings.backup_dir / UNDO_FOLDER / f"{name}.undo"
    targets = {oid: plan for oid, plan in expected.tables.items() if plan.selection is not None}
    with run.live_session() as session, run.source_session() as source_session:
        run.console.step("ロックを取り、確認の後に対象の行が変わっていないかを確かめます")
        session.execute(putback.BEGIN)
        putback.lock(session, run.targets, guarded, settings.partial_lock_timeout)
        faults.kill_point("partial-locked")
        moved = [p.table.label for p in targets.values()
                 if p.selection and session.rows(p.selection.versions_sql())[0][0] != p.versions]
        if moved:
            session.execute("ROLLBACK;")
            now = preview(run)
            raise Refused(f"確認の後に {', '.join(moved)} の行が変わりました（何も変更していません）。"
                          "いまの差: "
                          + " / ".join(line.strip() for line in now.lines()[:8]), "差を確かめてから再実行")
        plan = load_plan(run, session, source_session, {oid: p.fresh() for oid, p in targets.items()})
        if plan.digest != expected.digest:
            raise Refused("確認の後に、戻す行が参照する行などが変わりました（何も変更していません）。"
                          "いまの差: "
                          + " / ".join(line.strip() for line in plan.lines()[:8]), "差を確かめてから再実行")
        if plan.blocked:
            raise Refused(f"参照されている行は消せません: {plan.blocked[0]}（何も変更していません）",
                          "参照している行を先に直すか、--mode=changed にする")
        # the tables that only get parent rows: locked as the named ones, within the same lock_timeout
        putback.lock(session, [p.table for p in plan.tables.values() if p.writes and p.selection is None], [],
                     settings.partial_lock_timeout)
        run.console.step("取り消し用ファイルを保存し、1 トランザクションで書き込みます")
        txid = int(session.rows("SELECT txid_current()")[0][0])
        header = {"run": name, "env": settings.env, "database": settings.db_name, "txid": txid,
                  "time": now_iso(), "operator": operator(), "source": run.source.label,
                  "file": run.source.file,
                  "mode": options.mode, "where": options.where, "fire_triggers": options.fire_triggers,
                  "tables": [{"index": p.index, "table": p.table.label, "key": list(p.key),
                              "columns": list(p.written), "rows": p.rows} for p in plan.tables.values()]}
        with private_file(undo_path) as handle:
            writer = UndoWriter(handle, header)
            _write(session, plan, run.live, writer, options.fire_triggers)
            faults.kill_point("partial-apply")
        fsync_directory(undo_path.parent)
        undo_sha256 = writer.hash.hexdigest()
        entry.details.update(run=name, undo=str(undo_path), undo_sha256=undo_sha256, txid=txid)
        append_started(settings.worklog_path, entry, stage="commit")
        faults.kill_point("partial-commit")
        session.execute("COMMIT;")
    return Applied(plan, name, undo_path, undo_sha256)


def _write(session: Session, plan: Plan, live: Catalog, writer: UndoWriter, fire_triggers: bool) -> None:
    written = [p for p in plan.tables.values() if p.writes]
    for p in written:  # the before-image first: the rows as they are, under lock
        if p.rows[UPDATED] or p.rows[DELETED]:
            keys = " UNION ALL ".join(f"SELECT {columns_sql(p.key)} FROM {p.temps[kind]}"
                                      for kind in (UPDATED, DELETED) if p.rows[kind])
            writer.section(p.index, "before", session.copy_out(
                f"SELECT {columns_sql(p.written, 't')} FROM {p.table.sql} t WHERE EXISTS "
                f"(SELECT 1 FROM ({keys}) k WHERE {putback.key_match(p.key, 't', 'k')})"))
        if p.rows[DELETED]:
            writer.section(p.index, "deleted", session.copy_out(f"SELECT * FROM {p.temps[DELETED]}"))
    tables = [p.table for p in written]
    if not fire_triggers:
        putback.disable_triggers(session, tables)
    order = live.parents_first({p.table.oid for p in written})
    by_oid = {p.table.oid: p for p in written}
    # deletes first, children first: a row coming back may take a unique value a deleted row holds
    for oid in reversed(order):
        p = by_oid[oid]
        if p.rows[DELETED]:
            putback.delete_by(session, p.table, p.key, p.temps[DELETED], p.rows[DELETED])
    for oid in order:  # then parents first: each table's changed rows, then its rows to add
        p = by_oid[oid]
        own = frozenset(c for fk in p.table.foreign_keys if fk.parent == oid for c in fk.columns)
        if p.rows[UPDATED]:  # (a table that references itself: those columns after the rows to
            # add, a changed row may point at one; the others before, they may free a unique value)
            putback.update_from(session, putback.Keyed(p.table, p.key, p.temps[UPDATED]), p.rows[UPDATED],
                                leave=own)
        if p.inserted_from():
            putback.insert_from(session, p.table, p.inserted_from(), p.rows[INSERTED] + p.rows[PARENT])
        if p.rows[UPDATED] and own:
            putback.update_references(session, putback.Keyed(p.table, p.key, p.temps[UPDATED]), own)
    moved: list[str] = []
    for p in written:  # the after-image: what undo must find unchanged, or refuse
        kinds = [kind for kind in (INSERTED, PARENT, UPDATED) if p.rows[kind]]
        if kinds:
            tagged = " UNION ALL ".join(f"SELECT {columns_sql(p.key)}, '{kind}' AS pgrunbook_kind "
                                        f"FROM {p.temps[kind]}"
                                        for kind in kinds)
            writer.section(p.index, "written", session.copy_out(
                f"SELECT {columns_sql(p.key, 'k')}, k.pgrunbook_kind, {row_hash(p.written, 't')} "
                f"FROM ({tagged}) k JOIN {p.table.sql} t ON {putback.key_match(p.key, 't', 'k')}"))
        if p.inserted_from():
            moved += putback.advance_sequences(session, p.table, p.inserted_from(), apply=True)
    plan.sequences = moved
    if not fire_triggers:
        putback.enable_triggers(session, tables)


def restore_partial(settings: Settings, options: PartialOptions, console: Console | None = None,
                    handed: RowSource | None = None,
                    ask: Callable[[str], str] | None = None) -> Applied | Plan:
    """``restore-partial``: from ``options.file``, or from ``handed`` (``--as-of``)."""
    console = console or Console(settings.secrets())
    if options.mode not in MODES:
        raise RunbookError(f"--mode={options.mode} は使えません", f"{' / '.join(MODES)} のどれか",
                           exit_code=2)
    if not options.tables:
        raise RunbookError("--table の指定が必要です", "例: --table=public.votes（複数可）", exit_code=2)
    check_where(options.where)
    entry = Entry("restore-partial", settings.env, settings.db_name, settings.db_container)
    entry.details.update(mode=options.mode, tables=list(options.tables), where=options.where,
                         fire_triggers=options.fire_triggers)
    if options.approved_by:
        entry.details["approved_by"] = options.approved_by
    with recorded(settings.worklog_path, entry, console.redact):
        pg = Postgres(discovery.db_container(settings), settings)
        live = read_catalog(pg, settings.db_name)
        targets = _targets(live, options)
        selections = selections_of(targets, options, live.major)
        reach = _reach(live, targets)
        refuse_row_security([live.named(label) for label in reach]
                            + [child for t in targets for child, _fk in live.children_of(t.oid)],
                            settings.db_user)
        wanted = _Wanted(options, handed, reach, live.partitions_of(reach))
        with contextlib.ExitStack() as stack:
            folder = stack.enter_context(_work_folder(settings))
            session = stack.enter_context(Session(pg, settings.db_name, APPLICATION))
            scan = stack.enter_context(_scanning(LiveScan(session, selections, folder)))
            source, shown = stack.enter_context(
                _rows_from(pg, settings, wanted, console, entry))
            run = Run(pg, settings, source, options, live, targets, folder, console)
            plan = preview(run, scan)
            entry.details["preview"] = plan.counts()
            if plan.blocked or plan.empty:
                for line in plan.lines():
                    console.summary(line)
            if plan.blocked:
                raise Refused(f"参照されている行は消せません: {plan.blocked[0]}（何も変更していません）",
                              "参照している行を先に直すか、--mode=changed にする")
            if plan.empty:
                console.summary("戻す行はありません。何も変更していません")
                return plan
            faults.pause_point("partial-previewed")
            confirm(settings, Banner(
                f"稼働中の DB に行を戻します（--mode={options.mode}、アプリは止めません）",
                source_lines(shown), pg.container.engine_description(),
                [f"  元         : {source.label}", *plan.lines()]), options.confirm_env, console, ask)
            with exclusive_lock(settings.backup_dir, settings.db_container, settings.db_name,
                                "restore-partial"):
                _remove_stale_undo_temporaries(settings, folder)
                applied = apply(run, plan, entry)
        entry.details["counts"] = applied.plan.counts()
        entry.details["sequences"] = applied.plan.sequences
        for line in applied.plan.sequences:
            console.summary(line)
        console.summary(f"戻しました（run {applied.run}）: " + "、".join(
            f"{label} " + "・".join(f"{KIND_WORDS[k]} {n}" for k, n in counts.items())
            for label, counts in applied.plan.counts().items())
            + f"。取り消すなら: invoke restore-partial-undo --env={settings.env} --run={applied.run}")
        return applied


@contextlib.contextmanager
def _scanning(scan: LiveScan) -> Iterator[LiveScan]:
    """The scan ends before its session does, whatever ends the block."""
    try:
        yield scan
    finally:
        scan.thread.join()


@dataclass(frozen=True)
class _Wanted:
    """Where a restore-partial's rows are to come from: ``options.file``, or a row source
    ``handed`` over (``--as-of``); ``reach``: the tables (``schema.name``) whose rows a kit
    database made from the file needs (the targets and the parents they may need)."""

    options: PartialOptions
    handed: RowSource | None
    reach: set[str]
    partitions: dict[str, tuple[str, ...]] = field(default_factory=dict)  # Extract.partitions


@contextlib.contextmanager
def _rows_from(pg: Postgres, settings: Settings, wanted: _Wanted, console: Console,
               entry: Entry) -> Iterator[tuple[RowSource, Source]]:
    """The row source, and what the confirmation shows of it."""
    options, handed, reach = wanted.options, wanted.handed, wanted.reach
    if handed is not None:
        entry.file = handed.label
        entry.details.update(handed.details)
        shown = Source(Path(handed.label), "custom", settings.env, None, None, 0, None)
        guard_environment(settings, shown, options.approved_by, console)
        yield handed, shown
        return
    if not options.file:
        raise Refused("--file（戻すバックアップ）か --as-of（PITR の時刻）の指定が必要です",
                      f"invoke list --env={settings.env} でファイルを確かめて指定", exit_code=2)
    source, facts = inspect_with_facts(pg, settings, options.file, console)
    entry.file = str(source.path)
    entry.details["source_env"] = source.env
    check_versions(source, facts.version)
    guard_environment(settings, source, options.approved_by, console)
    extract = Extract(source, reach, partitions=wanted.partitions)
    with from_archive(pg, settings, facts, extract, console) as restored:
        entry.sha256 = restored.sha256
        yield restored, source


def _remove_stale_undo_temporaries(settings: Settings, keep: Path) -> None:
    """What a killed run left in the folder: an undo file never renamed to its name (only
    written under the env's lock, held now), a work folder whose run's process is gone (a
    run still at its preview or confirmation, without the lock, keeps its own)."""
    folder = settings.backup_dir / UNDO_FOLDER
    for path in folder.glob(".*.undo.*.tmp"):
        path.unlink(missing_ok=True)
    for path in folder.glob(".work-*"):
        if path != keep and not _running(path.name):
            shutil.rmtree(path, ignore_errors=True)


def _running(name: str) -> bool:
    """The work folder ``name``'s run is alive (or on another host: not this one's to judge)."""
    found = WORK_FOLDER.match(name)
    if found is None:
        return False
    if found["host"] != socket.gethostname():
        return True
    return journal.running(int(found["pid"]), found["started"])
