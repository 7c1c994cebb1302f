"""Rollback, list and drop of the kit's databases."""

from __future__ import annotations

from collections.abc import Callable

from pgrunbook.core import journal
from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, append_started, read, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.postgres import (
    Postgres,
    quote_literal,
)
from pgrunbook.restore.apps import AppWrites
from pgrunbook.restore.databases import KitDatabase, drop_kit_database, kit_databases, kit_name, mark_text
from pgrunbook.restore.guards import Banner, confirm, one_writer, preflight_replace
from pgrunbook.restore.swap import Swap, live_closed, record_identity, swap_databases, wait_out_sessions


def restore_rollback(
    settings: Settings, previous: str, confirm_env: str | None, console: Console,
    ask: Callable[[str], str] | None = None,
) -> str:
    entry = Entry("restore-rollback", settings.env, settings.db_name, settings.db_container)
    entry.details["previous"] = previous
    with recorded(settings.worklog_path, entry, console.redact):
        journal.refuse_unfinished(settings)
        pg = Postgres(discovery.db_container(settings), settings)
        kit = {db.name: db for db in kit_databases(pg)}
        if previous not in kit or kit[previous].role != "previous" or kit[previous].env != settings.env:
            done = None if previous in kit else _rolled_back(settings, previous)
            if done:
                raise Refused(
                    f"{previous} は {done.get('time', '')[:19].replace('T', ' ')} にロールバック済みです"
                    f"（今の {settings.db_name} がその DB です。何も変更していません）",
                    f"置き換え後の DB は {done.get('rolledback') or 'restore-list の rolledback'} に保管。"
                    f"一覧は invoke restore-list --env={settings.env}")
            raise Refused(f"{previous} はこの環境の置き換え前 DB ではありません",
                          f"invoke restore-list --env={settings.env} で確認")
        confirm(settings, Banner(f"{previous} に戻します（ロールバック）", kept_lines(kit[previous]),
                                 pg.container.engine_description()), confirm_env, console, ask)
        apps = AppWrites(settings, console)
        apps.check()
        rolled = kit_name(settings, "rolledback")
        entry.details["rolledback"] = rolled
        with one_writer(settings, pg, "restore-rollback"):
            # the live database carries the original comment since the replace
            facts = pg.facts(settings.db_name)
            if facts.database:
                for warning in preflight_replace(settings, facts, creates=False):
                    console.warn(warning)
            live_comment = facts.database.comment if facts.database else None
            failed: list[str] = []
            wait_out_sessions(pg, [settings.db_name, previous], settings.replace_session_wait, console)
            record = journal.Journal.begin(settings, "restore-rollback", previous=previous)
            try:
                append_started(settings.worklog_path, entry, stage="swap")
                record.update(stage="apps-stop")
                apps.stop(before_each=record.app_stopping)
                record.update(stage="swap")
                swap_databases(pg, Swap(settings.db_name, previous, rolled,
                                        mark_text("rolledback", settings, "rolled back"), live_comment),
                               facts.version)
            finally:
                try:
                    failed = apps.start(on_started=record.app_started)
                finally:
                    # kept while an app it stopped is still stopped, or the live DB is closed
                    # (the swap could not reopen it): every task names it, restore-recover repairs
                    record.close(settled=not live_closed(pg, settings.db_name))
        record_identity(pg, entry)
        if failed:
            raise RunbookError(f"ロールバックしましたが、アプリを再開できません: {'; '.join(failed)}",
                               f"invoke restore-recover --env={settings.env} で再開")
        console.summary(f"ロールバック完了: {previous} を {settings.db_name} に戻しました。"
                        f"置き換え後の DB は {rolled} に保管")
        return rolled


def rollback_command(settings: Settings, previous: str) -> str:
    """The command that puts ``previous`` (kept by a replace) back as the live database."""
    return f"invoke restore-rollback --env={settings.env} --previous={previous} --confirm={settings.env}"


def kept_lines(kept: KitDatabase) -> list[str]:
    """The confirmation banner's lines for the database a rollback puts back."""
    replaced_by = kept.remark.removeprefix("replaced by ") if kept.remark.startswith("replaced by ") else ""
    return [
        f"  戻す DB    : {kept.name}（置き換え前に保管した DB）  サイズ: {human_size(kept.size)}",
        f"  保管日時   : {kept.made_at}" + (f"（{replaced_by} で置き換えたとき）" if replaced_by else ""),
    ]


def _rolled_back(settings: Settings, previous: str) -> dict | None:
    """The work log's successful rollback to ``previous`` (this env, this database), if any."""
    for record in reversed(read(settings.worklog_path)):
        if (record.get("task") == "restore-rollback" and record.get("result") == "ok"
                and record.get("env") == settings.env and record.get("database") == settings.db_name
                and record.get("previous") == previous):
            return record
    return None


def list_kit_databases(settings: Settings, console: Console) -> list[KitDatabase]:
    pg = Postgres(discovery.db_container(settings), settings)
    return [db for db in kit_databases(pg) if db.env == settings.env]


def drop_database(
    settings: Settings, name: str, confirm_env: str | None, console: Console
) -> None:
    entry = Entry("restore-drop", settings.env, settings.db_name, settings.db_container)
    entry.details["target"] = name
    with recorded(settings.worklog_path, entry, console.redact):
        pg = Postgres(discovery.db_container(settings), settings)
        if name == settings.db_name:
            raise Refused("稼働中の DB は削除できません", "キットが作った DB だけを指定")
        kit = {db.name: db for db in kit_databases(pg) if db.env == settings.env}
        if name not in kit and not pg.database_exists(name):
            raise Refused(f"データベース {name} はありません",
                          f"invoke restore-list --env={settings.env} で名前を確認")
        if name not in kit:
            raise Refused(f"{name} はキットが作ったこの環境の DB ではないため削除しません",
                          f"invoke restore-list --env={settings.env} で確認")
        if kit[name].role in ("previous", "rolledback") and confirm_env != settings.env:
            raise Refused(f"{name} は置き換え前の DB です。削除すると元に戻せません",
                          f"確かめたうえで --confirm={settings.env} を付けて再実行")
        slots = [row[0] for row in pg.query(
            "SELECT slot_name FROM pg_replication_slots WHERE database = "
            f"{quote_literal(name)} ORDER BY 1", "postgres")]
        if slots:
            raise Refused(
                f"{name} には論理レプリケーションスロット {', '.join(slots)} があります（削除しません）",
                "サブスクライバーを確かめ、不要なら SELECT pg_drop_replication_slot('<名前>') で"
                "消してから再実行")
        drop_kit_database(pg, name)
        console.summary(f"{name} を削除しました")
