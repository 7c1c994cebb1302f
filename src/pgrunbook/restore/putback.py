"""The writes of a partial restore and of its undo, inside one transaction of the
live database (``infra.session.Session``): locks, triggers, counted writes from
temporary tables, rows that reference what would be deleted, sequences; and the
undo file that is saved before the commit.

Locks: the tables written are locked ``IN SHARE ROW EXCLUSIVE MODE`` (readers
go on; the app's writes to those tables wait until the commit, a few seconds;
its writes to every other table go on), and the tables whose foreign keys
reference rows being deleted or changed ``IN SHARE MODE`` (nobody adds a
reference meanwhile: an ``ON DELETE CASCADE`` never takes an app's new row
along). One lock per table rather than ``SELECT … FOR UPDATE`` of each row: no
new row can slip into the selection between the check and the write, and a
selection of millions of rows is not locked (and written to the WAL) row by
row. ``lock_timeout`` (``PARTIAL_LOCK_TIMEOUT``) bounds the wait: the app is
never kept waiting behind the kit for longer.

Triggers: by default the rows put back are the backup's as they were, so the
user triggers of the tables written are disabled for the transaction
(``ALTER TABLE … DISABLE TRIGGER <name>``, the same lock, undone before the
commit and rolled back with everything else on any failure). This needs the
table's ownership; ``SET session_replication_role = replica`` would need a
superuser and would also switch off the foreign keys. Foreign keys are never
switched off.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.infra.postgres import quote_ident, quote_literal
from pgrunbook.infra.session import Session, SessionEnded
from pgrunbook.restore.tables import ForeignKey, Table, columns_sql

INSERTED, UPDATED, DELETED, PARENT = "ins", "upd", "del", "par"
# the write's transaction: a deferrable constraint (INITIALLY DEFERRED) is checked at each
# write as every other one, never at the COMMIT: a clash is then said (``counted``) before
# the undo file is kept and the run logged as committing
BEGIN = "BEGIN; SET CONSTRAINTS ALL IMMEDIATE;"


def temp_name(kind: str, index: int) -> str:
    return f"pg_temp.pgrunbook_{kind}_{index}"


def create_temp(session: Session, kind: str, index: int, table: Table, columns: tuple[str, ...]) -> str:
    """An empty temporary table with ``columns`` of ``table`` (their types), dropped at the end."""
    name = temp_name(kind, index)
    session.execute(f"CREATE TEMP TABLE {name.split('.', 1)[1]} ON COMMIT DROP AS "
                    f"SELECT {columns_sql(columns)} FROM {table.sql} WITH NO DATA;")
    return name


def key_match(key: tuple[str, ...], left: str, right: str) -> str:
    return " AND ".join(f"{left}.{quote_ident(k)} = {right}.{quote_ident(k)}" for k in key)


def lock(session: Session, written: list[Table], guarded: list[Table], timeout: str) -> None:
    """``lock_timeout``, then the locks of the module docstring, in one order (by name)."""
    session.execute(f"SET LOCAL lock_timeout = {quote_literal(timeout)};")
    names = sorted({t.label: t for t in written}.items())
    try:
        if names:
            session.execute(f"LOCK TABLE {', '.join(t.sql for _l, t in names)} IN SHARE ROW EXCLUSIVE MODE;")
        others = sorted({t.label: t for t in guarded if t.label not in dict(names)}.items())
        if others:
            session.execute(f"LOCK TABLE {', '.join(t.sql for _l, t in others)} IN SHARE MODE;")
    except SessionEnded as error:
        if "lock timeout" in error.message or "ロック" in error.message:
            raise Refused(
                f"テーブル {', '.join(label for label, _t in names)} のロックを {timeout} 以内に"
                "取れませんでした"
                "（長いトランザクションが使用中。何も変更していません）",
                "pg_stat_activity で待たせているセッションを確かめ、終わってから再実行"
                "（待つ時間は PARTIAL_LOCK_TIMEOUT）") from None
        raise


def disable_triggers(session: Session, tables: list[Table]) -> None:
    """The user triggers that would fire, off for this transaction (see the docstring)."""
    for table in tables:
        if not table.firing_triggers:
            continue
        if not table.owned:
            raise Refused(
                f"{table.label} にはトリガー（{', '.join(n for n, _e in table.firing_triggers)}）があり、"
                f"DB_USER は所有者 {table.owner} ではないため止められません（何も変更していません）",
                "トリガーを動かしてよいなら --fire-triggers（監査ログなどに行が増えます）、"
                f"止めるなら {table.owner} のメンバーの DB_USER で実行")
        session.execute("".join(f"ALTER TABLE {table.sql} DISABLE TRIGGER {quote_ident(name)};"
                                for name, _enabled in table.firing_triggers))


def enable_triggers(session: Session, tables: list[Table]) -> None:
    """Each trigger back as it was (ENABLE, or ENABLE ALWAYS)."""
    for table in tables:
        statements = [f"ALTER TABLE {table.sql} ENABLE {'ALWAYS ' if enabled == 'A' else ''}TRIGGER "
                      f"{quote_ident(name)};" for name, enabled in table.firing_triggers]
        if statements:
            session.execute("".join(statements))


CLASH_HINT = ("同じ値の行がその後に作られています。その行も戻すなら --mode=exact、"
              "除くなら --where で対象を絞る")
UNDO_CLASH_HINT = ("実行の後に同じ値の行が作られています。その行を確かめ、消してよければ消してから再実行、"
                   "残すなら取り消し用ファイルを見て手で直す")


def counted(session: Session, statement: str, expected: int, what: str, clash_hint: str = CLASH_HINT) -> None:
    """A write that must touch exactly ``expected`` rows (else the whole transaction fails);
    ``clash_hint``: what to do when a row meets a unique value (a run's, or an undo's)."""
    if not expected:
        return
    try:
        done = int(session.rows(f"WITH done AS ({statement} RETURNING 1) SELECT count(*) FROM done")[0][0])
    except SessionEnded as error:
        clash = re.search(r'violates unique constraint "([^"]+)"', error.message)
        if clash:
            raise Refused(f"{what}: 戻す行が稼働中の DB の行と一意制約 {clash[1]} でぶつかります"
                          "（何も変更していません）", clash_hint) from None
        broken = re.search(r'violates (foreign key|check|not-null|exclusion) constraint(?: "([^"]+)")?',
                           error.message)
        if broken:
            raise Refused(f"{what}: 戻す行が稼働中の DB の制約 {broken[2] or broken[1]} を満たしません"
                          "（何も変更していません）",
                          "バックアップの後に制約か参照先の行が変わっています。restore-diff で差を確かめ、"
                          "その行を手作業で直すか --where で除く") from None
        raise
    if done != expected:
        raise RunbookError(f"{what}: {done} 行（予定 {expected} 行）。何も変更していません",
                           "実行中に行が変わった可能性があります。再実行して差を確かめる")


def insert_from(session: Session, table: Table, sources: list[str], expected: int,
                clash_hint: str = CLASH_HINT) -> None:
    columns = columns_sql([c.name for c in table.written])
    overriding = " OVERRIDING SYSTEM VALUE" if table.identity_always else ""
    rows = " UNION ALL ".join(f"SELECT {columns} FROM {name}" for name in sources)
    counted(session, f"INSERT INTO {table.sql} ({columns}){overriding} {rows}", expected,
            f"{table.label} への追加", clash_hint)


@dataclass(frozen=True)
class Keyed:
    """The rows of ``source`` (a temporary table), each matched to ``table``'s row by ``key``."""

    table: Table
    key: tuple[str, ...]
    source: str


def update_from(session: Session, rows: Keyed, expected: int, clash_hint: str = CLASH_HINT,
                leave: frozenset[str] = frozenset()) -> None:
    """Every row of ``rows.source`` written over its row (by the key), but the columns ``leave``."""
    table, key, source = rows.table, rows.key, rows.source
    changed = [c.name for c in table.written
               if c.name not in key and c.identity != "a" and c.name not in leave]
    if not changed:
        return
    assignments = ", ".join(f"{quote_ident(name)} = u.{quote_ident(name)}" for name in changed)
    counted(session, f"UPDATE {table.sql} AS t SET {assignments} FROM {source} AS u "
                     f"WHERE {key_match(key, 't', 'u')}", expected, f"{table.label} の更新", clash_hint)


def update_references(session: Session, rows: Keyed, columns: frozenset[str],
                      clash_hint: str = CLASH_HINT) -> None:
    """The ``columns`` of ``rows.source``'s rows (foreign keys) written over theirs where they
    differ: the other half of ``update_from(leave=columns)``, before or after it."""
    table, key, source = rows.table, rows.key, rows.source
    names = sorted(columns)
    differ = " OR ".join(f"t.{quote_ident(n)} IS DISTINCT FROM u.{quote_ident(n)}" for n in names)
    match = f"FROM {source} AS u WHERE {key_match(key, 't', 'u')} AND ({differ})"
    expected = int(session.rows(f"SELECT count(*) FROM {table.sql} AS t, {source} AS u "
                                f"WHERE {key_match(key, 't', 'u')} AND ({differ})")[0][0])
    assignments = ", ".join(f"{quote_ident(n)} = u.{quote_ident(n)}" for n in names)
    counted(session, f"UPDATE {table.sql} AS t SET {assignments} {match}", expected, f"{table.label} の更新",
            clash_hint)


def delete_by(session: Session, table: Table, key: tuple[str, ...], source: str, expected: int) -> None:
    counted(session, f"DELETE FROM {table.sql} AS t USING {source} AS d WHERE {key_match(key, 't', 'd')}",
            expected, f"{table.label} の削除")


def advance_sequences(session: Session, table: Table, sources: list[str], apply: bool) -> list[str]:
    """Sequences never move backwards: a sequence owned by a column is moved up to the
    largest value put back when that value is at or above its next value. Returns
    what moved (or would move). Not transactional (no sequence is): a run that fails
    after it leaves only a gap of numbers."""
    said = []
    for column, sequence in table.sequences:
        rows = " UNION ALL ".join(f"SELECT {quote_ident(column)} AS v FROM {name}" for name in sources)
        found = session.rows(
            f"SELECT m.v, s.last_value, s.is_called, q.seqincrement "
            f"FROM (SELECT max(v) AS v FROM ({rows}) x) m, {sequence} s, pg_sequence q "
            f"WHERE q.seqrelid = {quote_literal(sequence)}::regclass")
        if not found or found[0][0] == "":
            continue
        top, last, called, step = int(found[0][0]), int(found[0][1]), found[0][2] == "t", int(found[0][3])
        following = last + step if called else last
        if step > 0 and top >= following:
            if apply:
                session.execute(f"SELECT setval({quote_literal(sequence)}, {top}, true);")
            said.append(f"シーケンス {sequence} を {top} まで進め{'ました' if apply else 'ます'}"
                        f"（次の値 {following} → {top + step}。"
                        f"戻した行の {table.label}.{column} が上回るため）")
    return said


@dataclass(frozen=True)
class Referenced:
    """Parent rows that other rows may reference: ``sql`` a query of the parent's
    referenced columns, ``what`` says which rows (e.g. "public.members の削除する行")."""

    sql: str
    what: str


def referencing(session: Session, child: Table, fk: ForeignKey, parents: Referenced, exclude: str | None,
                child_key: tuple[str, ...] | None) -> str | None:
    """The line that refuses: rows of ``child`` whose foreign key ``fk`` references the
    ``parents``, but for the rows ``exclude`` (a temporary table of child keys) names;
    None when there are none."""
    rows_sql, what = parents.sql, parents.what
    columns, parent_columns = fk.columns, fk.parent_columns
    shown = child_key or columns
    label = " || ', ' || ".join(f"c.{quote_ident(name)}::text" for name in shown)
    skip = f" AND NOT EXISTS (SELECT 1 FROM {exclude} z WHERE {key_match(child_key, 'z', 'c')})" \
        if exclude and child_key else ""
    match = " AND ".join(f"c.{quote_ident(a)} = r.{quote_ident(b)}" for a, b in zip(columns, parent_columns,
                                                                                     strict=True))
    found = session.rows(
        f"SELECT count(*), coalesce((array_agg({label}))[1:5]::text, '') FROM {child.sql} c "
        f"WHERE EXISTS (SELECT 1 FROM ({rows_sql}) r WHERE {match}){skip}")
    count, examples = int(found[0][0]), found[0][1]
    if not count:
        return None
    return f"{child.label} の {count} 行（{examples}）が {what}を参照しています（{fk.name}）"


# ---- the undo file ----------------------------------------------------------------------
#
# A JSON header line, then sections of COPY text, each opened by a line
# ``\section <table index> <kind>`` and closed by ``\.`` (COPY's own end line; a
# row's backslashes are escaped, so no row line starts with either):
#   before  : the rows as they were before the run (updated or deleted), all written columns
#   written : key fields, "ins"/"upd"/"par", the hash of the row as the run left it
#   deleted : key fields of the rows the run deleted

UNDO_KIND = "pgrunbook-partial-undo"


class UndoWriter:
    """Writes the undo file (to a handle of ``core.files.private_file``), hashing it."""

    def __init__(self, handle: IO[bytes], header: dict[str, Any]) -> None:
        self.handle = handle
        self.hash = hashlib.sha256()
        first = json.dumps({"kind": UNDO_KIND, "version": 1, **header}, ensure_ascii=False)
        self._write(first.encode() + b"\n")

    def _write(self, data: bytes) -> None:
        self.handle.write(data)
        self.hash.update(data)

    def section(self, index: int, kind: str, lines: Iterator[bytes]) -> int:
        self._write(f"\\section {index} {kind}\n".encode())
        count = 0
        for line in lines:
            self._write(line + b"\n")
            count += 1
        self._write(b"\\.\n")
        return count


@dataclass
class UndoFile:
    path: Path
    header: dict[str, Any]

    def sections(self) -> Iterator[tuple[int, str, Iterator[bytes]]]:
        """(table index, kind, its lines): read each section's lines before the next."""
        with open(self.path, "rb") as handle:
            handle.readline()
            for raw in handle:
                line = raw.rstrip(b"\n")
                if not line.startswith(b"\\section "):
                    raise RunbookError(f"{self.path.name} の形式が違います（{line[:40]!r}）")
                _word, index, kind = line.decode().split(" ")
                yield int(index), kind, _until_end(handle)


def _until_end(handle: IO[bytes]) -> Iterator[bytes]:
    for raw in handle:
        if raw == b"\\.\n":
            return
        yield raw
    raise RunbookError("取り消し用ファイルが途中で切れています")


def read_undo(path: Path) -> UndoFile:
    try:
        with open(path, "rb") as handle:
            header = json.loads(handle.readline())
    except OSError as error:
        raise RunbookError(f"取り消し用ファイル {path} を読めません（{error.strerror}）",
                           "ファイルの権限と場所を確かめて再実行") from None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("kind") != UNDO_KIND:
        raise RunbookError(f"{path} は取り消し用ファイルの形式ではありません（何も変更していません）",
                           "書き換えられているか別のファイルです。取り消しは手作業で")
    return UndoFile(path, header)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
