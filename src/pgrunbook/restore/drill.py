"""verify --restore-test: a full restore into a throwaway database, checked, dropped
(or, with RESTORE_PRESTAGE and the env's newest backup, kept closed: prestage.py)."""

from __future__ import annotations

from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.postgres import (
    Postgres,
)
from pgrunbook.restore import prestage
from pgrunbook.restore.checks import DatabaseSummary, compare_with_manifest, summarize_database
from pgrunbook.restore.databases import create_database, drop_kit_database, kit_name, mark_text
from pgrunbook.restore.guards import check_versions
from pgrunbook.restore.source import inspect_with_facts
from pgrunbook.restore.staging import RestoreOptions, restore_into


def restore_test(settings: Settings, file: str | None, console: Console) -> DatabaseSummary:
    entry = Entry("verify-restore-test", settings.env, settings.db_name, settings.db_container)
    with recorded(settings.worklog_path, entry, console.redact):
        pg = Postgres(discovery.db_container(settings), settings)
        source, facts = inspect_with_facts(pg, settings, file, console)
        entry.file = str(source.path)
        if source.env not in (None, settings.env):
            raise Refused(f"{source.path.name} は環境 {source.env} のファイルです",
                          f"--env={source.env} で実行")
        check_versions(source, facts.version)
        why_not = prestage.wanted_for(settings, source)
        if settings.restore_prestage and why_not:
            console.step(f"事前展開はしません（{why_not}）")
        if why_not is None:
            prestage.make_room(pg, settings, facts, source, console)
        target = kit_name(settings, "verify" if why_not else prestage.ROLE)
        kept = False
        options = RestoreOptions()
        create_database(pg, target, mark_text("verify", settings, source.path.name),
                        like=facts.database)
        try:
            entry.sha256 = restore_into(pg, settings, source, target, options, console, facts)
            summary = summarize_database(pg, target, source.table_counts())
            differences = compare_with_manifest(source, summary)
            if why_not is None and not differences and source.manifest is not None:
                prestage.keep(pg, settings, target, source, entry.sha256,
                              prestage.restore_flags(source, options, replace=False),
                              sum(summary.tables.values()), console)
                kept = True
        finally:
            if not kept:
                drop_kit_database(pg, target)
        if source.manifest is None:
            console.warn("マニフェストがないため行数の照合はできません（復元できることのみ確認）")
        if differences:
            raise RunbookError("復元テストで差異: " + "; ".join(differences[:5]),
                               "このバックアップは信用できません。取り直して再検証")
        entry.details["tables"] = len(summary.tables)
        entry.details["prestaged"] = target if kept else None
        where = (f"事前展開 DB {target} として接続を閉じて保管（restore-replace --file={source.path.name} は"
                 "切り替えだけで済みます）" if kept else f"一時 DB {target} は削除済み")
        console.summary(f"復元テスト OK: {source.path.name}（テーブル {len(summary.tables)}、"
                        f"行数合計 {sum(summary.tables.values())}、{where}）")
        return summary
