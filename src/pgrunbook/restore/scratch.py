"""restore-scratch (the runbook's B): restore into a database of its own, never the live one."""

from __future__ import annotations

from dataclasses import dataclass

from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.settings import SQL_NAME, Settings
from pgrunbook.core.worklog import Entry, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.manual import connect_command
from pgrunbook.infra.postgres import (
    Postgres,
)
from pgrunbook.restore.appcheck import apply_masking, database_url, run_post_restore_command
from pgrunbook.restore.checks import DatabaseSummary, compare_with_manifest, summarize_database
from pgrunbook.restore.databases import (
    create_database,
    drop_kit_database,
    kit_databases,
    mark_text,
    scratch_name,
)
from pgrunbook.restore.guards import check_versions, warn_personal_data
from pgrunbook.restore.source import inspect_with_facts
from pgrunbook.restore.staging import RestoreJob, RestoreOptions, restore_into


@dataclass(frozen=True)
class ScratchResult:
    database: str
    url: str  # "" when the host reaches no port of the server (docker exec only)
    summary: DatabaseSummary


def restore_scratch(
    settings: Settings,
    file: str | None,
    database: str | None = None,
    replace: bool = False,
    options: RestoreOptions | None = None,
    console: Console | None = None,
) -> ScratchResult:
    console = console or Console(settings.secrets())
    options = options or RestoreOptions()
    entry = Entry("restore-scratch", settings.env, settings.db_name, settings.db_container)
    with recorded(settings.worklog_path, entry, console.redact):
        pg = Postgres(discovery.db_container(settings), settings)
        source, facts = inspect_with_facts(pg, settings, file, console)
        entry.file = str(source.path)
        target = database or scratch_name(settings)
        _validate_target_name(settings, target)
        entry.details["target"] = target
        entry.details["source_env"] = source.env
        check_versions(source, facts.version)
        personal = warn_personal_data(settings, source, console)
        if pg.database_exists(target):
            mine = {db.name: db for db in kit_databases(pg)
                    if db.env == settings.env and db.role == "scratch"}
            if not replace:
                raise Refused(f"データベース {target} は既にあります",
                              "--replace で作り直す（キットが作った検証用 DB のみ）か --db=別名")
            if target not in mine:
                raise Refused(f"データベース {target} はこの環境の検証用 DB（scratch）ではないため消しません",
                              "--db=別名 を指定")
            console.step(f"既存の検証用 DB {target} を作り直します")
            drop_kit_database(pg, target)
        create_database(pg, target, mark_text("scratch", settings, source.path.name), like=facts)
        try:
            entry.sha256 = restore_into(pg, settings, RestoreJob(source, target, options), console, facts)
            if personal:
                apply_masking(pg, settings, target, console)
        except BaseException:
            drop_kit_database(pg, target)
            raise
        summary = summarize_database(pg, target, source.table_counts())
        for line in summary.lines():
            console.step(line)
        for difference in compare_with_manifest(source, summary):
            console.warn(difference)
        # the URL only where the host reaches the server: APP_DATABASE_URL, or a published port
        address = None if settings.app_database_url else pg.container.host_address()
        url = database_url(settings, target, masked=True, address=address)
        run_post_restore_command(settings, target, console, address)
        if settings.app_database_url or address:
            look = f"DATABASE_URL={url}"
        else:
            url = ""
            look = (f"{connect_command(settings, target)}（DB のポートはホストに公開されていません。"
                    f"アプリから見るなら .env.{settings.env} に APP_DATABASE_URL）")
        # the file by name in every case: under cron or in a pipe the steps are silent
        console.summary(f"検証用 DB {target} に {source.path.name} を復元しました。確認用: {look}")
        return ScratchResult(target, url, summary)


def _validate_target_name(settings: Settings, name: str) -> None:
    if not SQL_NAME.match(name):
        raise RunbookError(f"DB 名 {name!r} は使えません", "英数字と _ のみ、63 文字以内")
    if name in (settings.db_name, "postgres", "template0", "template1"):
        raise Refused(f"{name} には検証用の復元はできません（本番 DB・システム DB）",
                      "--db に別の名前を指定")
