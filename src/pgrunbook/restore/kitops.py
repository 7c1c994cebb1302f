"""Rollback, list and drop of the kit's databases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pgrunbook.core import journal
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, append_started, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.postgres import (
    Postgres,
    quote_literal,
)
from pgrunbook.restore.apps import AppWrites
from pgrunbook.restore.databases import KitDatabase, drop_kit_database, kit_databases, kit_name, mark_text
from pgrunbook.restore.guards import confirm, one_writer, preflight_replace
from pgrunbook.restore.source import Source
from pgrunbook.restore.swap import live_closed, record_identity, swap_databases, wait_out_sessions


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
            raise Refused(f"{previous} はこの環境の置き換え前 DB ではありません",
                          f"invoke restore-list --env={settings.env} で確認")
        placeholder = Source(Path(previous), "custom", settings.env, None, None, kit[previous].size, None)
        confirm(settings, placeholder, confirm_env, f"{previous} に戻します（ロールバック）", console, ask,
                engine=pg.container.engine_description())
        apps = AppWrites(settings, console)
        apps.check()
        rolled = kit_name(settings, "rolledback")
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
                swap_databases(pg, settings.db_name, previous, rolled,
                               mark_text("rolledback", settings, "rolled back"), live_comment,
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
