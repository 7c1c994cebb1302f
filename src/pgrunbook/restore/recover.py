"""restore-recover: find what an interrupted run left and put it right.

What a ``kill -9`` (or a power cut, an OOM kill, a dropped ssh without its
SIGHUP) can leave, and what is done about it:

* the live database closed to connections     -> ALLOW_CONNECTIONS true
* staging / verify databases of this env       -> their sessions ended (an
  orphaned pg_restore stops), dropped
* archives uploaded into the container's /tmp  -> removed (this env's only)
* app containers the run stopped               -> started (the journal names them)
* the journal itself                           -> removed once all is done

Never touched: the live database's data, the previous databases kept by a
replace (they are the way back) and scratch databases (an operator's work).
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from docker.errors import NotFound

from pgrunbook.core import journal
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.container import engine
from pgrunbook.infra.postgres import Postgres, quote_ident, quote_literal
from pgrunbook.restore.databases import drop_kit_database, kit_databases
from pgrunbook.restore.guards import ask_on_stderr, one_writer
from pgrunbook.restore.kitops import rollback_command
from pgrunbook.restore.staging import upload_prefix
from pgrunbook.restore.swap import wait_for_script

LEFTOVER_ROLES = ("staging",)  # verify DBs: a restore test may be running (no lock); restore-drop


@dataclass(frozen=True)
class Repair:
    what: str  # shown to the operator
    manual: str  # the same by hand
    action: Callable[[], None]


def find_repairs(settings: Settings, pg: Postgres, record: dict | None) -> list[Repair]:
    repairs: list[Repair] = []
    # a swap script that is still finishing by itself decides the state: wait for it
    swaps = pg.container.run(["sh", "-c", "ls -d /tmp/pgrunbook-swap-* 2>/dev/null || true"])
    for work_dir in swaps.stdout.decode().split():
        if wait_for_script(pg, work_dir) == "stale":  # its script died with the container
            repairs.append(Repair(f"中断された切り替えスクリプトの作業フォルダ {work_dir}"
                                  "（コンテナの停止・再起動で中断）→ 削除",
                                  f"docker exec {pg.container.name} rm -rf {work_dir}",
                                  lambda path=work_dir: _remove(pg, path)))
    facts = pg.facts(settings.db_name)
    live_q = quote_ident(settings.db_name)
    if facts.database is None:
        raise RunbookError(
            f"稼働中の DB {settings.db_name} がありません（キットの置き換えは名前を 1 トランザクションで"
            "入れ替えるため、キットが消したものではありません）",
            f"invoke restore-list --env={settings.env} で以前の DB を確かめ、restore-rollback で戻す")
    if not facts.database.allow_connections:
        sql = f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS true"
        repairs.append(Repair(f"{settings.db_name} が接続を受け付けない状態 → 開く", sql,
                              lambda sql=sql: pg.execute(sql, "postgres")))  # bound now: sql is reused below
    ours = (record or {}).get("staging")
    for db in kit_databases(pg):
        if db.env == settings.env and db.role in LEFTOVER_ROLES:
            sql = f"DROP DATABASE {quote_ident(db.name)} WITH (FORCE)"
            if db.name != ours and db.host not in (None, socket.gethostname()):
                # another host's run, perhaps between its restore and its swap (no session)
                repairs.append(Repair(
                    f"{db.role} DB {db.name} はホスト {db.host} の作業のものです（このホストの中断の記録に"
                    f"ない DB）: そのホストで invoke restore-recover --env={settings.env} を実行するか、"
                    f"止まっていると確かめたら手作業で: {sql}", sql, lambda: None))
                continue
            sessions = 0 if db.name == ours else _sessions(pg, db.name)
            if sessions:
                # not the interrupted run's (its journal names its own), and in use: a
                # replace of this env from another host or checkout may be restoring into it
                repairs.append(Repair(
                    f"{db.role} DB {db.name} は使用中です（セッション {sessions}、中断の記録にない DB）: "
                    "別のホストか別の作業の置き換えの可能性があるため残します。"
                    f"止まっていると確かめたら手作業で: {sql}", sql, lambda: None))
                continue
            repairs.append(Repair(f"途中で残った {db.role} DB {db.name} → セッションを終了して削除", sql,
                                  lambda name=db.name: drop_kit_database(pg, name)))
    prefix = upload_prefix(settings.env)
    listing = pg.container.run(["sh", "-c", f"ls -d /tmp/{prefix}* 2>/dev/null || true"])
    uploads = listing.stdout.decode().split()
    if record and record.get("upload") and record["upload"] not in uploads:
        exists = pg.container.run(["test", "-e", record["upload"]]).ok
        uploads += [record["upload"]] if exists else []
    in_use = _paths_in_use(pg) if any(path != (record or {}).get("upload") for path in uploads) else ""
    for path in uploads:
        manual = f"docker exec {pg.container.name} rm -rf {path}"
        if path != (record or {}).get("upload") and path + "/" in in_use:
            repairs.append(Repair(f"コンテナ内のアップロード {path} は使用中です（中断の記録にないもの）: "
                                  f"別の作業が読んでいる可能性があるため残します。手作業なら: {manual}",
                                  manual, lambda: None))
            continue
        repairs.append(Repair(f"コンテナ内に残ったアップロード {path} → 削除", manual,
                              lambda path=path: _remove(pg, path)))
    for name in (record or {}).get("apps_stopped", []):
        repairs.append(_app_repair(name))
    return [repair for repair in repairs if repair is not None]


def _sessions(pg: Postgres, database: str) -> int:
    rows = pg.query("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                    f"{quote_literal(database)} AND pid <> pg_backend_pid()", "postgres")
    return int(rows[0][0])


def _paths_in_use(pg: Postgres) -> str:
    """The command lines of the container's processes (a pg_restore names its archive)."""
    script = ('for p in /proc/[0-9]*; do tr "\\000" " " < "$p/cmdline" 2>/dev/null; echo; done')
    return pg.container.run(["sh", "-c", script]).stdout.decode("utf-8", "replace")


def _remove(pg: Postgres, path: str) -> None:
    result = pg.container.run(["rm", "-rf", path])
    if not result.ok:
        raise RunbookError(f"{path} を削除できません: {result.error_text()}")


def _app_repair(name: str) -> Repair | None:
    try:
        model = engine().containers.get(name)
    except NotFound:
        return Repair(f"停止したアプリのコンテナ {name} が見つかりません（確認のみ）",
                      f"docker ps -a | grep {name}",
                      lambda: None)
    if model.status == "running":
        return None
    return Repair(f"停止したままのアプリのコンテナ {name} → 起動", f"docker start {name}", model.start)


def _live(settings: Settings) -> Postgres:
    return Postgres(discovery.db_container(settings), settings)


def restore_recover(
    settings: Settings, confirm_env: str | None, console: Console, dry_run: bool = False,
    ask: Callable[[str], str] | None = None,
) -> list[str]:
    """Repair what an interrupted run of this env left; return what was done."""
    entry = Entry("restore-recover", settings.env, settings.db_name, settings.db_container)
    with recorded(settings.worklog_path, entry, console.redact):
        record = journal.read(settings)
        if record and journal.is_alive(record):
            raise Refused(f"{record.get('task')} が実行中です"
                          f"（pid {record.get('pid')}、{record.get('host')}）",
                          "その作業の終了を待つ。止まっているなら ps で確かめる")
        swapped = swapped_before_the_interruption(settings, record)
        if record:
            entry.details["interrupted"] = {k: record.get(k) for k in ("task", "stage", "started_at",
                                                                        "operator", "file")}
            console.summary(f"中断された {record.get('task')}: 開始 {record.get('started_at')}、"
                            f"{record.get('operator')}、段階 {record.get('stage')}、"
                            f"ファイル {record.get('file')}" + (f"。{swapped}" if swapped else ""))
        # another host's run (journal.other_host) is repaired here only while no run of the
        # database holds the server's lock: then it is not going on anywhere
        with said_first(swapped), one_writer(settings, pg := _live(settings), "restore-recover"):
            repairs = find_repairs(settings, pg, record)
            if not repairs:
                if record and not dry_run:
                    journal.Journal(journal.path_of(settings), record).finish()
                console.summary("修復が必要なものはありません"
                                + ("（中断の記録を消しました）" if record and not dry_run else ""))
                return []
            for repair in repairs:
                console.summary(f"  - {repair.what}")
            if dry_run:
                for repair in repairs:
                    console.result(repair.manual)
                return [repair.what for repair in repairs]
            _confirm(settings, confirm_env, console, ask)
            done = []
            for repair in repairs:
                repair.action()
                console.step(f"済: {repair.what}")
                done.append(repair.what)
            entry.details["repaired"] = done
            after = pg.facts(settings.db_name).database  # say it only once it is true
            if after is None or not after.allow_connections:
                raise RunbookError(
                    f"修復後も {settings.db_name} が接続を受け付けません（中断の記録は残しています）",
                    f"手作業: ALTER DATABASE {quote_ident(settings.db_name)} WITH ALLOW_CONNECTIONS true")
            if record:
                journal.Journal(journal.path_of(settings), record).finish()
            console.summary(f"修復しました（{len(done)} 件）。{settings.db_name} は接続を受け付けます")
            return done


def swapped_before_the_interruption(settings: Settings, record: dict | None) -> str:
    """An interrupted replace whose swap had committed (its journal says so): that it is
    done, where the old data is and the way back; "" for any other run."""
    if not record or record.get("task") != "restore-replace" or record.get("stage") != "after-swap" \
            or not record.get("previous"):
        return ""
    return (f"中断された置き換えは完了しています（{settings.db_name} は新しい DB、以前の DB は "
            f"{record['previous']}。元に戻すなら: {rollback_command(settings, record['previous'])}）")


@contextlib.contextmanager
def said_first(state: str) -> Iterator[None]:
    """A failure inside says ``state`` first (a completed replace must not read as failed)."""
    try:
        yield
    except RunbookError as error:
        if not state:
            raise
        kind = Refused if isinstance(error, Refused) else RunbookError
        raise kind(f"{state}。修復は途中で止まりました: {error.message}", error.hint,
                   error.exit_code) from None


def _confirm(settings: Settings, confirm_env: str | None, console: Console,
             ask: Callable[[str], str] | None) -> None:
    if confirm_env is not None:
        if confirm_env != settings.env:
            raise Refused(f"--confirm={confirm_env} が対象環境 {settings.env} と一致しません",
                          f"--confirm={settings.env} で再実行")
        return
    if ask is None and not sys.stdin.isatty():
        raise Refused("端末がないため確認できません（何も変更していません）",
                      f"内容を確かめたうえで --confirm={settings.env} を付けて再実行"
                      f"（--dry-run で手作業のコマンドを表示）")
    prompt = f"上の修復を行います。環境名を入力してください（{settings.env}）: "
    typed = (ask or ask_on_stderr)(prompt).strip()
    if typed != settings.env:
        raise Refused(f"環境名が一致しません（入力: {typed!r}）。中止しました")
