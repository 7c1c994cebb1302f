"""``restore-partial-undo``: a partial restore reversed from its undo file, if the
rows it wrote are as it left them.

Which run: ``--run=ID``, or the last run of the env that was committed and not
undone yet (an undo never goes further back by itself: a second undo of the
same run is refused, naming the run before it). A run killed before its
``COMMIT`` wrote nothing: its file (kept) is refused by the transaction's
status (``txid_status``).

In one transaction, as the run itself (``putback``): the tables locked, the
file's rows loaded into temporary tables, every row the run wrote compared
with the hash it left (inserted and changed rows present and unchanged, deleted
rows still absent); any difference refuses, naming the keys. Then the rows the
run changed get their foreign keys' columns back (first: a changed row may
reference a row the run added, a parent brought back or a row of its own table),
the rows it inserted are deleted (children first), the rows it changed get their
other columns back (after: a row added may have held one of their unique values),
the rows it deleted come back (parents first). Sequences stay where they are
(never backwards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgrunbook.core import faults
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, append_started, read_trusted, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.postgres import Postgres, quote_ident
from pgrunbook.infra.session import Session
from pgrunbook.restore import putback
from pgrunbook.restore.guards import Banner, confirm, source_lines
from pgrunbook.restore.partial import APPLICATION, KIND_WORDS, UNDO_FOLDER
from pgrunbook.restore.putback import DELETED, INSERTED, PARENT, UPDATED, UndoFile, read_undo
from pgrunbook.restore.source import Source
from pgrunbook.restore.tables import Catalog, Table, columns_sql, read_catalog, refuse_row_security, row_hash

EXAMPLES = 5


@dataclass
class UndoTable:
    table: Table
    index: int
    key: tuple[str, ...]
    columns: tuple[str, ...]
    temps: dict[str, str]
    rows: dict[str, int]

    def reverted(self) -> putback.Keyed:
        """The rows to change back (their before-image, in a temporary table)."""
        return putback.Keyed(self.table, self.key, f"pg_temp.pgrunbook_revert_{self.index}")


def _runs(settings: Settings) -> list[dict[str, Any]]:
    """The partial restores of this env in the work log (the trusted part), oldest first,
    with ``undone`` set when an undo of theirs succeeded."""
    records, _chain = read_trusted(settings.worklog_path)
    runs: dict[str, dict[str, Any]] = {}
    for record in records:
        run = record.get("run")
        if record.get("env") != settings.env or not run:
            continue
        if record.get("task") == "restore-partial" and record.get("undo") and (
                record.get("result") == "ok" or (record.get("result") == "started"
                                                 and record.get("stage") == "commit")):
            runs.setdefault(run, {}).update(record)
        elif record.get("task") == "restore-partial-undo" and record.get("result") == "ok" and run in runs:
            runs[run]["undone"] = record.get("time")
        elif (record.get("task") == "restore-partial-undo" and record.get("result") == "started"
              and record.get("stage") == "commit" and run in runs and record.get("txid")):
            # an undo stopped at its COMMIT: done or not, its transaction says
            runs[run].setdefault("undo_attempts", []).append((int(record["txid"]), record.get("time")))
    return list(runs.values())


def _committed(session: Session, txid: int) -> str:
    """The run's transaction: committed, aborted, in progress, or None when too old to know."""
    found = session.rows(f"SELECT coalesce(txid_status({int(txid)}), 'unknown')")
    return found[0][0]


def choose_run(settings: Settings, run: str | None) -> dict[str, Any]:
    runs = _runs(settings)
    if run:
        chosen = next((r for r in runs if r.get("run") == run), None)
        if chosen is None:
            path = settings.backup_dir / UNDO_FOLDER / f"{run}.undo"
            if not path.is_file():
                raise RunbookError(f"run {run} の記録も取り消し用ファイルもありません",
                                   f"作業ログ（{settings.worklog_path}）の restore-partial の行の"
                                   " run を指定", 2)
            chosen = {"run": run, "undo": str(path)}
        if chosen.get("undone"):
            raise Refused(f"run {run} は {chosen['undone']} に取り消し済みです（何も変更していません）")
        return chosen
    if not runs:
        raise Refused("この環境には取り消せる restore-partial の実行がありません（何も変更していません）")
    last = runs[-1]
    before = [r["run"] for r in runs[:-1] if not r.get("undone")]
    if last.get("undone"):
        raise Refused(f"直近の run {last['run']} は {last['undone']} に取り消し済みです"
                      "（何も変更していません）",
                      f"さらに前の実行を戻すなら --run={before[-1]}" if before else "")
    return {**last, "before": before[-1]} if before else last


def _load(session: Session, undo: UndoFile, live: Catalog) -> list[UndoTable]:
    tables: dict[int, UndoTable] = {}
    for item in undo.header["tables"]:
        table = live.named(item["table"])
        if table is None:
            raise Refused(f"{item['table']} が稼働中の DB にありません（取り消せません）")
        columns = tuple(item["columns"])
        if tuple(c.name for c in table.written) != columns:
            raise Refused(f"{table.label} の列が実行の後に変わっています"
                          "（取り消せません。何も変更していません）",
                          "取り消し用ファイルの行を手作業で戻す（先頭行の JSON のあとに COPY 形式の行）")
        key = tuple(item["key"])
        index = int(item["index"])
        temps = {"before": putback.create_temp(session, "before", index, table, columns),
                 "written": putback.create_temp(session, "written", index, table, key),
                 "deleted": putback.create_temp(session, "deleted", index, table, key)}
        session.execute(f"ALTER TABLE {temps['written']} ADD COLUMN pgrunbook_kind text, "
                        "ADD COLUMN pgrunbook_hash text;")
        rows = {k: int(v) for k, v in item["rows"].items()}
        tables[index] = UndoTable(table, index, key, columns, temps, rows)
    for index, kind, lines in undo.sections():
        entry = tables[index]
        names = entry.columns if kind == "before" else entry.key
        extra = ", pgrunbook_kind, pgrunbook_hash" if kind == "written" else ""
        session.copy_in(entry.temps[kind], columns_sql(names) + extra, lines)
    return list(tables.values())


def _conflicts(session: Session, entry: UndoTable) -> list[str]:
    """Keys whose rows are not as the run left them."""
    match = putback.key_match(entry.key, "t", "w")
    label = " || ', ' || ".join(f"w.{quote_ident(k)}::text" for k in entry.key)
    changed = session.rows(
        f"SELECT {label} FROM {entry.temps['written']} w LEFT JOIN {entry.table.sql} t ON {match} "
        f"WHERE t.{quote_ident(entry.key[0])} IS NULL OR {row_hash(entry.columns, 't')}::text "
        f"IS DISTINCT FROM w.pgrunbook_hash ORDER BY 1 LIMIT {EXAMPLES + 1}")
    back = session.rows(
        f"SELECT {label.replace('w.', 'd.')} FROM {entry.temps['deleted']} d JOIN {entry.table.sql} t "
        f"ON {putback.key_match(entry.key, 't', 'd')} ORDER BY 1 LIMIT {EXAMPLES + 1}")
    return [f"{entry.table.label}（{row[0]}）" for row in changed + back]


def restore_partial_undo(settings: Settings, run: str | None, confirm_env: str | None,
                         fire_triggers: bool, console: Console | None = None,
                         ask: Callable[[str], str] | None = None) -> dict[str, dict[str, int]]:
    console = console or Console(settings.secrets())
    entry = Entry("restore-partial-undo", settings.env, settings.db_name, settings.db_container)
    with recorded(settings.worklog_path, entry, console.redact):
        chosen = choose_run(settings, run)
        entry.details["run"] = chosen["run"]
        path = Path(chosen["undo"])
        if not path.is_file():
            raise RunbookError(f"run {chosen['run']} の取り消し用ファイル {path} がありません"
                               "（何も変更していません）",
                               "移動・削除されていないか確かめ、元の場所に戻して再実行"
                               "（作業ログの sha256 と照合します）")
        if chosen.get("undo_sha256") and putback.sha256_of(path) != chosen["undo_sha256"]:
            raise RunbookError(f"取り消し用ファイル {path.name} の sha256 が作業ログの記録と一致しません"
                               "（何も変更していません）",
                               "ファイルが書き換えられています。元のファイルがあれば戻して再実行、"
                               "なければ取り消しは手作業で")
        undo = read_undo(path)
        if undo.header.get("env") != settings.env or undo.header.get("database") != settings.db_name:
            raise Refused(f"{path.name} は {undo.header.get('env')} / {undo.header.get('database')} "
                          "の実行です",
                          "同じ環境で実行")
        entry.file = str(path)
        pg = Postgres(discovery.db_container(settings), settings)
        entry.sha256 = chosen.get("undo_sha256")
        shown = Source(path, "custom", settings.env, {"started_at": undo.header.get("time")}, None,
                       path.stat().st_size, None)
        counts = {item["table"]: {k: v for k, v in item["rows"].items() if v}
                  for item in undo.header["tables"]}
        confirm(settings, Banner(
            f"restore-partial の run {chosen['run']} を取り消します", source_lines(shown),
            pg.container.engine_description(),
            ["  取り消す実行の内容:"] + [
                f"    {label}: " + "、".join(f"{KIND_WORDS[k]} {v} 行" for k, v in rows.items())
                for label, rows in counts.items() if rows]), confirm_env, console, ask)
        with exclusive_lock(settings.backup_dir, settings.db_container, settings.db_name,
                            "restore-partial-undo"), Session(pg, settings.db_name, APPLICATION) as session:
            session.execute(putback.BEGIN)
            state = _committed(session, int(undo.header["txid"]))
            if state in ("aborted", "in progress"):
                raise Refused(f"run {chosen['run']} は適用されていません（トランザクション {state}）。"
                              "取り消すものはありません",
                              f"その前の実行を取り消すなら --run={chosen['before']}" if chosen.get("before")
                              else "")
            for txid, when in chosen.get("undo_attempts", []):
                if _committed(session, txid) == "committed":
                    raise Refused(f"run {chosen['run']} は {when} に取り消し済みです（その取り消しは"
                                  " COMMIT の直後に止まり、作業ログに結果が残っていません。"
                                  "何も変更していません）")
            live = read_catalog(pg, settings.db_name)
            tables = [live.named(item["table"]) for item in undo.header["tables"]]
            written = [t for t in tables if t is not None]
            guarded = [child for t in written for child, _fk in live.children_of(t.oid)]
            refuse_row_security(written + guarded, settings.db_user)
            putback.lock(session, written, guarded, settings.partial_lock_timeout)
            entries = _load(session, undo, live)
            conflicts = [line for entry_ in entries for line in _conflicts(session, entry_)]
            if conflicts:
                raise Refused("実行の後に変わった行があるため取り消しません: "
                              f"{', '.join(conflicts[:EXAMPLES])}"
                              + (" …" if len(conflicts) > EXAMPLES else "") + "（何も変更していません）",
                              "その行を確かめ、必要なら取り消し用ファイルを見て手で直す")
            blocked = _blocked(session, live, entries)
            if blocked:
                raise Refused(f"戻した行を消せません: {blocked[0]}（何も変更していません）",
                              "その行を参照している行を先に直す")
            done = _reverse(session, live, entries, fire_triggers)
            entry.details["txid"] = int(session.rows("SELECT txid_current()")[0][0])
            append_started(settings.worklog_path, entry, stage="commit")
            faults.kill_point("partial-undo-commit")
            session.execute("COMMIT;")
            faults.kill_point("partial-undo-committed")
        entry.details["counts"] = done
        console.summary(f"取り消しました（run {chosen['run']}）: " + "、".join(
            f"{label} " + "・".join(f"{k} {v}" for k, v in rows.items()) for label, rows in done.items()))
        return done


def _inserted(entry: UndoTable, *kinds: str) -> str:
    listed = ", ".join(f"'{kind}'" for kind in (kinds or (INSERTED, PARENT)))
    return (f"(SELECT {columns_sql(entry.key)} FROM {entry.temps['written']} "
            f"WHERE pgrunbook_kind IN ({listed}))")


def _blocked(session: Session, live: Catalog, entries: list[UndoTable]) -> list[str]:
    """Rows (the app's, since) that reference rows the undo would delete: not the rows
    the undo deletes too, nor those it changes back first (their before-image is from
    before the run, when the rows it added were not there)."""
    blocked = []
    by_oid = {e.table.oid: e for e in entries}
    for entry in entries:
        if not entry.rows.get(INSERTED) and not entry.rows.get(PARENT):
            continue
        for child, fk in live.children_of(entry.table.oid):
            rows_sql = (f"SELECT {columns_sql(fk.parent_columns, 't')} FROM {entry.table.sql} t "
                        f"JOIN {_inserted(entry)} i ON {putback.key_match(entry.key, 't', 'i')}")
            own = by_oid.get(child.oid)
            exclude = None
            if own is not None:
                gone = _inserted(own, INSERTED, PARENT, UPDATED)
                session.execute(f"CREATE TEMP TABLE IF NOT EXISTS pgrunbook_gone_{own.index} "
                                f"ON COMMIT DROP AS SELECT * FROM {gone} x;")
                exclude = f"pg_temp.pgrunbook_gone_{own.index}"
            parents = putback.Referenced(rows_sql, f"戻した {entry.table.label} の行")
            line = putback.referencing(session, child, fk, parents, exclude,
                                       own.key if own else child.primary_key)
            if line:
                blocked.append(line)
    return blocked


def _reverse(session: Session, live: Catalog, entries: list[UndoTable],
             fire_triggers: bool) -> dict[str, dict[str, int]]:
    tables = [e.table for e in entries]
    if not fire_triggers:
        putback.disable_triggers(session, tables)
    order = live.parents_first({e.table.oid for e in entries})
    by_oid = {e.table.oid: e for e in entries}
    done: dict[str, dict[str, int]] = {}
    references: dict[int, frozenset[str]] = {}
    for oid in order:  # the rows the run changed: their foreign keys first (see the module docstring)
        entry = by_oid[oid]
        if entry.rows.get(UPDATED):
            session.execute(f"CREATE TEMP TABLE pgrunbook_revert_{entry.index} ON COMMIT DROP AS "
                            f"SELECT b.* FROM {entry.temps['before']} b JOIN {entry.temps['written']} w "
                            f"ON {putback.key_match(entry.key, 'b', 'w')} "
                            f"AND w.pgrunbook_kind = '{UPDATED}';")
            references[oid] = frozenset(c for fk in entry.table.foreign_keys for c in fk.columns
                                        if c not in entry.key)
            if references[oid]:
                putback.update_references(session, entry.reverted(), references[oid], putback.UNDO_CLASH_HINT)
    for oid in reversed(order):  # the rows the run added: children first
        entry = by_oid[oid]
        count = entry.rows.get(INSERTED, 0) + entry.rows.get(PARENT, 0)
        if count:
            session.execute(f"CREATE TEMP TABLE pgrunbook_added_{entry.index} ON COMMIT DROP AS "
                            f"SELECT * FROM {_inserted(entry)} x;")
            putback.delete_by(session, entry.table, entry.key, f"pg_temp.pgrunbook_added_{entry.index}",
                              count)
            done.setdefault(entry.table.label, {})["削除"] = count
    for oid in order:  # then their other columns (a row added may have held a unique value of theirs)
        entry = by_oid[oid]
        if entry.rows.get(UPDATED):
            putback.update_from(session, entry.reverted(), entry.rows[UPDATED], putback.UNDO_CLASH_HINT,
                                leave=references[oid])
            done.setdefault(entry.table.label, {})["元に戻す（更新）"] = entry.rows[UPDATED]
    for oid in order:  # the rows the run deleted: parents first
        entry = by_oid[oid]
        if entry.rows.get(DELETED):
            session.execute(f"CREATE TEMP TABLE pgrunbook_back_{entry.index} ON COMMIT DROP AS "
                            f"SELECT b.* FROM {entry.temps['before']} b JOIN {entry.temps['deleted']} d "
                            f"ON {putback.key_match(entry.key, 'b', 'd')};")
            putback.insert_from(session, entry.table, [f"pg_temp.pgrunbook_back_{entry.index}"],
                                entry.rows[DELETED], putback.UNDO_CLASH_HINT)
            done.setdefault(entry.table.label, {})["追加（削除した行）"] = entry.rows[DELETED]
    if not fire_triggers:
        putback.enable_triggers(session, tables)
    return done
