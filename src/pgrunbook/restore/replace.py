"""restore-replace (the runbook's A, made safe): staging restore, checks, then the swap."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pgrunbook.console import Console
from pgrunbook.container import Container
from pgrunbook.errors import Refused, RunbookError
from pgrunbook.postgres import (
    Postgres,
    ServerFacts,
    quote_ident,
)
from pgrunbook.restore.appcheck import apply_masking, run_post_restore_command
from pgrunbook.restore.apps import AppWrites
from pgrunbook.restore.checks import DatabaseSummary, compare_with_manifest, summarize_database
from pgrunbook.restore.databases import cleanup_step, create_database, drop_kit_database, kit_name, mark_text
from pgrunbook.restore.guards import check_versions, confirm, guard_environment
from pgrunbook.restore.source import Source, inspect_with_facts, side_by_side
from pgrunbook.restore.staging import RestoreOptions, restore_into
from pgrunbook.restore.swap import database_level_notes, swap_committed, swap_databases
from pgrunbook.safety import exclusive_lock
from pgrunbook.settings import Settings
from pgrunbook.worklog import Entry, recorded


@dataclass(frozen=True)
class ReplaceResult:
    database: str
    previous: str
    summary: DatabaseSummary


def restore_replace(
    settings: Settings,
    file: str | None,
    confirm_env: str | None = None,
    approved_by: str | None = None,
    options: RestoreOptions | None = None,
    console: Console | None = None,
    ask: Callable[[str], str] | None = None,
) -> ReplaceResult:
    console = console or Console(settings.secrets())
    options = options or RestoreOptions()
    entry = Entry("restore-replace", settings.env, settings.db_name, settings.db_container)
    if approved_by:
        entry.details["approved_by"] = approved_by
    with recorded(settings.worklog_path, entry, console.redact):
        if not file:
            raise Refused("置き換えリストアには --file の指定が必要です",
                          f"invoke verify --env={settings.env} などで戻すファイルを確かめて指定")
        pg = Postgres(Container.find(settings.db_container), settings)
        source, facts = inspect_with_facts(pg, settings, file, console)
        entry.file = str(source.path)
        entry.details["source_env"] = source.env
        check_versions(source, facts.version)
        personal = guard_environment(settings, source, approved_by, console)
        if facts.database is None:
            raise RunbookError(f"置き換え対象の {settings.db_name} がありません",
                               "新規に作るなら restore-scratch の後で名前を変える手順を検討")
        apps = AppWrites(settings, console)
        apps.check()
        engine = pg.container.engine_description()
        entry.details["engine"] = engine
        confirm(settings, source, confirm_env, "既存 DB を置き換えます（DROP はしません）", console, ask,
                engine=engine)
        with exclusive_lock(settings.backup_dir, settings.db_container, settings.db_name,
                            "restore-replace"):
            result = _replace_locked(settings, pg, facts, source, options, personal, apps, console,
                                     entry)
        return result


def _replace_locked(
    settings: Settings, pg: Postgres, facts: ServerFacts, source: Source, options: RestoreOptions,
    personal: bool, apps: AppWrites, console: Console, entry: Entry,
) -> ReplaceResult:
    now = datetime.now()
    staging = kit_name(settings, "staging", now)
    previous = kit_name(settings, "previous", now)
    entry.details["staging"] = staging
    rollback = (f"invoke restore-rollback --env={settings.env} --previous={previous} "
                f"--confirm={settings.env}")
    failed_apps: list[str] = []
    try:
        live = facts.database
        assert live is not None  # checked by restore_replace
        create_database(pg, staging, mark_text("staging", settings, source.path.name), like=live)
        entry.sha256 = restore_into(pg, settings, source, staging, options, console, facts)
        if personal:
            apply_masking(pg, settings, staging, console)
        # the live database's owner, comment and settings as they are now, not as they
        # were before a restore that may have taken hours
        summary, current = side_by_side(
            lambda: summarize_database(pg, staging, None if personal else source.table_counts()),
            lambda: pg.facts(settings.db_name))
        live = current.database or live
        differences = compare_with_manifest(source, summary)
        if differences:
            raise RunbookError("復元結果がバックアップ時の記録と一致しません: " + "; ".join(differences[:5]),
                               "ファイルを invoke verify で確認。本番 DB は変更していません")
        if not summary.tables and (source.manifest or {}).get("tables"):
            raise RunbookError("復元先にテーブルがありません", "本番 DB は変更していません")
        if live.owner != settings.db_user:  # the staging DB is the kit user's own
            try:
                pg.execute(f"ALTER DATABASE {quote_ident(staging)} OWNER TO {quote_ident(live.owner)}",
                           "postgres")
            except RunbookError as error:
                console.warn(f"DB の所有者を {live.owner} にできません（{error.message}）。"
                             "置き換え後に確認してください")
        for note in database_level_notes(live):
            console.warn(f"pg_restore は DB 単位の設定を戻しません。置き換え後に再設定してください: {note}")
        try:
            apps.stop()
            console.step(f"切り替え: {settings.db_name} → {previous}、{staging} → {settings.db_name}")
            swap_databases(pg, settings.db_name, staging, previous,
                  mark_text("previous", settings, "replaced by " + source.path.name), live.comment,
                  facts.version)
        finally:
            failed_apps = apps.start()
    except BaseException as error:
        swapped = swap_committed(pg, staging, previous)
        stopped = (f" 再開できなかったアプリ: {'; '.join(failed_apps)}（docker start で再開）"
                   if failed_apps else "")
        if swapped:
            raise RunbookError(
                f"切り替えは完了しています（{settings.db_name} は新しい DB、以前の DB は {previous}）が、"
                f"その後に失敗しました: {error}.{stopped}",
                f"元に戻すなら: {rollback}",
            ) from error
        left = cleanup_step(f"検証用 DB {staging} の削除", lambda: drop_kit_database(pg, staging), console)
        if swapped is None or left or failed_apps:
            state = "不明（サーバーに問い合わせできません）" if swapped is None else "元のまま"
            raise RunbookError(
                f"置き換えに失敗しました: {error}。本番 DB {settings.db_name} は{state}。"
                + (f" {staging} が残っています（invoke restore-drop --env={settings.env} --db={staging}）。"
                   if left else "") + stopped,
                f"invoke restore-list --env={settings.env} で状態を確認",
            ) from error
        raise
    entry.details["previous"] = previous
    # planner statistics for the new database right away (autovacuum would take a
    # minute or more); in the background, so the app is not kept waiting for it
    with contextlib.suppress(RunbookError):
        pg.container.start_detached(pg.psql_argv(settings.db_name) + ["-c", "ANALYZE"],
                                    settings.password_environment())
        console.step("プランナー統計の作成（ANALYZE）をバックグラウンドで開始")
    if failed_apps:
        raise RunbookError(
            f"DB は置き換えましたが、アプリのコンテナを再開できません: {'; '.join(failed_apps)}",
            f"docker start で再開。元に戻すなら: {rollback}",
        )
    try:
        # the live database is the staging database renamed: its summary stands
        for line in summary.lines():
            console.step(line.replace(staging, settings.db_name, 1))
        run_post_restore_command(settings, settings.db_name, console)
    except RunbookError as error:
        raise RunbookError(
            f"置き換えは完了しましたが、事後確認で失敗しました: {error.message}",
            f"以前の DB は {previous} に残っています。元に戻すなら: {rollback}",
        ) from None
    console.summary(
        f"置き換え完了: {settings.db_name} ← {source.path.name}。以前の DB は {previous} に保管。"
        f" 元に戻す: {rollback} / 不要になったら: invoke restore-drop --env={settings.env} "
        f"--db={previous} --confirm={settings.env}"
    )
    return ReplaceResult(settings.db_name, previous, summary)
