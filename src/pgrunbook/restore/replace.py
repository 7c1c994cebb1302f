"""restore-replace (the runbook's A, made safe): staging restore, checks, then the swap.

Order of a replace, and what an interruption at each step leaves (the journal,
journal.py, records each step before it starts; restore-recover repairs):
1. checks that need no change: file, versions, env rules, prepared
   transactions and DB_USER's privileges (they would stop the swap), banner;
   then the local lock and the server's (one run of the database anywhere)
2. the staging database (made like the live one: locale provider, tablespace,
   owner), the upload, the staging restore                  -> staging DB, upload
   (or, with a prestaged database of the same file, that one claimed as the
   staging database: prestage.py; every later step is the same)
3. row counts against the manifest (before any masking), masking SQL, owners
   and privileges made and checked equal to the live database's
4. the sessions DB_USER cannot end waited out (else refused, the restored
   database kept for the retry), the work log's "started" line, the app
   containers stopped                                        -> stopped apps
5. the swap (one script inside the container that cannot leave the live
   database closed), the apps started again (the journal names each until it
   runs: an interruption here leaves it for restore-recover)
6. the database itself (locale, tablespace, limit, template, comment),
   settings and privileges checked on the new database
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pgrunbook.core import faults, journal
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, append_started, recorded
from pgrunbook.infra import discovery
from pgrunbook.infra.framing import LostAnswer
from pgrunbook.infra.postgres import (
    Ask,
    DatabaseFacts,
    Postgres,
    ServerFacts,
    ServerLock,
    quote_ident,
)
from pgrunbook.infra.versions import describe_locale
from pgrunbook.restore import checks, diff, prestage, privileges
from pgrunbook.restore.appcheck import apply_masking, run_post_restore_command
from pgrunbook.restore.apps import AppWrites
from pgrunbook.restore.checks import DatabaseSummary, compare_with_manifest, summarize_database
from pgrunbook.restore.databases import (
    cleanup_step,
    create_database,
    creation_differences,
    drop_kit_database,
    kit_name,
    mark_text,
)
from pgrunbook.restore.guards import (
    Banner,
    ask_on_stderr,
    check_versions,
    confirm,
    guard_environment,
    one_writer,
    preflight_replace,
    source_lines,
)
from pgrunbook.restore.kitops import rollback_command
from pgrunbook.restore.source import Source, inspect_with_facts, side_by_side
from pgrunbook.restore.staging import NoSpace, RestoreJob, RestoreOptions, flush_restored_data, restore_into
from pgrunbook.restore.swap import (
    Blocked,
    Swap,
    database_level_statements,
    live_closed,
    record_identity,
    swap_committed,
    swap_databases,
    wait_out_sessions,
)
from pgrunbook.store import drift


@dataclass(frozen=True)
class ReplaceResult:
    database: str
    previous: str
    summary: DatabaseSummary


@dataclass
class Replace:
    """One replace run: what it works on and what it has done so far."""

    settings: Settings
    pg: Postgres
    facts: ServerFacts
    source: Source
    options: RestoreOptions
    personal: bool  # a protected env's data into a non-protected env: masking applies
    apps: AppWrites
    console: Console
    entry: Entry
    staging: str = ""
    previous: str = ""
    record: journal.Journal | None = None
    lock: ServerLock | None = None  # the server's advisory lock, held for the run's length
    prestage: prestage.Choice = field(default_factory=prestage.Choice)
    counted: DatabaseSummary | None = None  # the prestaged database's rows, counted at its claim
    summary: DatabaseSummary | None = None  # the staging database checked against the manifest
    failed_apps: list[str] = field(default_factory=list)
    objects_changed: bool = False  # owners, privileges or masking applied to the staging DB
    # the run has put right all it did, but for the apps the journal still lists as
    # stopped: only then is the journal removed (a Ctrl-C in a cleanup leaves it)
    settled: bool = False
    written_out: bool = False  # the staging DB's data is on disk already (an old prestaged one)

    @property
    def live(self) -> DatabaseFacts:
        assert self.facts.database is not None  # checked before the run starts
        return self.facts.database

    @property
    def rollback(self) -> str:
        return rollback_command(self.settings, self.previous)


@dataclass(frozen=True)
class ReplaceRequest:
    """What ``restore-replace`` is asked by the operator: the file to put in the live
    database's place, the env named to confirm without a terminal (``--confirm``) and who
    approved another env's data into a protected env (``--approved-by``)."""

    file: str | None
    confirm_env: str | None = None
    approved_by: str | None = None


def restore_replace(
    settings: Settings,
    request: ReplaceRequest,
    options: RestoreOptions | None = None,
    console: Console | None = None,
    ask: Callable[[str], str] | None = None,
) -> ReplaceResult:
    file, confirm_env, approved_by = request.file, request.confirm_env, request.approved_by
    console = console or Console(settings.secrets())
    options = options or RestoreOptions()
    entry = Entry("restore-replace", settings.env, settings.db_name, settings.db_container)
    if approved_by:
        entry.details["approved_by"] = approved_by
    with recorded(settings.worklog_path, entry, console.redact):
        if not file:
            raise Refused("置き換えリストアには --file の指定が必要です",
                          f"invoke verify --env={settings.env} などで戻すファイルを確かめて指定")
        journal.refuse_unfinished(settings)
        pg = Postgres(discovery.db_container(settings), settings)
        source, facts = inspect_with_facts(pg, settings, file, console)
        entry.file = str(source.path)
        entry.details["source_env"] = source.env
        check_versions(source, facts.version)
        personal = guard_environment(settings, source, approved_by, console)
        if facts.database is None:
            raise RunbookError(f"置き換え対象の {settings.db_name} がありません",
                               "新規に作るなら restore-scratch の後で名前を変える手順を検討")
        for warning in preflight_replace(settings, facts):
            console.warn(warning)
        apps = AppWrites(settings, console)
        apps.check()
        engine = pg.container.engine_description()
        entry.details["engine"] = engine
        ownership = options.resolved_ownership(source, replace=True)
        entry.details["ownership"] = ownership
        tables_now, choice = side_by_side(lambda: diff.live_tables(pg, settings.db_name),
                                          lambda: prestage.choose(pg, settings, source, options))
        shrink = shrink_findings(settings, source, tables_now)
        extra = [f"  所有者     : {OWNERSHIP_TEXT[ownership]}", choice.banner()]
        extra = [line for line in extra if line] + summary_lines(pg, settings, source, tables_now)
        if shrink:
            entry.details["shrink"] = shrink[:20]
            extra += ["  注意: 戻すデータは現在の DB より大幅に少なくなります（現在の DB → 戻すアーカイブ）:"]
            extra += [f"    {line}" for line in shrink[:10]]
        shown = Banner("既存 DB を置き換えます（DROP はしません）", source_lines(source), engine, extra)
        confirm(settings, shown, confirm_env, console, ask)
        if shrink:
            confirm_shrink(settings, options, confirm_env, console, ask)
        run = Replace(settings, pg, facts, source, options, personal, apps, console, entry,
                      prestage=choice)
        with one_writer(settings, pg, "restore-replace") as run.lock:
            run.record = journal.Journal.begin(settings, "restore-replace", file=str(source.path))
            try:
                return _replace_locked(run)
            finally:
                run.record.close(run.settled)


def summary_lines(pg: Postgres, settings: Settings, source: Source,
                  tables_now: diff.LiveTables | None = None) -> list[str]:
    """restore-diff's whole-database summary, as far as it is known without restoring."""
    return ["  戻すと変わるもの（invoke restore-diff と同じ要約）:",
            *(f"    {line}" for line in diff.quick(pg, settings, source, tables_now).lines(shown=5))]


def shrink_findings(settings: Settings, source: Source, tables_now: diff.LiveTables) -> list[str]:
    """The archive against the live database, by the drift check's thresholds:
    missing tables, per-table and total drops, a nearly empty archive. The live
    side uses the server's own estimates (no count(*) of a large database)."""
    incoming = source.table_counts()
    if not incoming:
        return []
    return drift.describe(drift.compare(tables_now.estimates, incoming,
                                        drift.Thresholds.from_settings(settings)))


def confirm_shrink(settings: Settings, options: RestoreOptions, confirm_env: str | None,
                   console: Console, ask: Callable[[str], str] | None) -> None:
    """A second, explicit yes for data that is far smaller than the live database's."""
    if options.accept_shrink:
        console.warn("戻すデータが大幅に少ないことを --accept-shrink で承知のうえ進めます（作業ログに記録）")
        return
    if confirm_env is None and (ask is not None or sys.stdin.isatty()):
        typed = (ask or ask_on_stderr)("データが減ることを承知で続けるなら「減ってよい」と入力してください: ")
        if typed.strip() == "減ってよい":
            return
    raise Refused("戻すデータは現在の DB より大幅に少なくなります（上の一覧。何も変更していません）",
                  "ファイルが正しいか invoke verify と restore-scratch で確かめ、"
                  "意図したものなら --accept-shrink を付けて再実行（作業ログに記録）")


OWNERSHIP_TEXT = {
    "archive": "バックアップのとおり",
    "live": "稼働中の DB と同じにする（バックアップに所有者の記録なし）",
    "restorer": "すべて DB_USER（--ownership=restorer）",
}


def _replace_locked(run: Replace) -> ReplaceResult:
    settings, pg, console, entry = run.settings, run.pg, run.console, run.entry
    now = datetime.now()
    run.staging = kit_name(settings, "staging", now)
    run.previous = kit_name(settings, "previous", now)
    entry.details["staging"] = run.staging
    assert run.record is not None
    try:
        if run.prestage.discard:
            console.step(f"信用できない事前展開 DB {run.prestage.discard.name} を削除")
            drop_kit_database(pg, run.prestage.discard.name)
        if run.prestage.use:
            _claim_prestaged(run)
        if not run.prestage.use:
            run.record.update(stage="staging-restore", staging=run.staging, previous=run.previous)
            create_database(pg, run.staging, mark_text("staging", settings, run.source.path.name),
                            like=run.facts, tablespace=True)
            try:
                job = RestoreJob(run.source, run.staging, run.options, replace=True,
                                 on_upload=lambda path: run.record.update(upload=path))
                entry.sha256 = restore_into(pg, settings, job, console, run.facts)
            except NoSpace as error:
                raise _naming_prestaged(run, error) from None
        faults.kill_point("checks")
        run.record.update(stage="checks")
        summary = _check_staging(run)
        carried = database_level_statements(settings.db_name, run.live)
        if not run.written_out:
            flush_restored_data(pg, console)
        faults.pause_point("apps-stop")
        wait_out_sessions(pg, [settings.db_name, run.staging], settings.replace_session_wait, console,
                          on_wait=lambda: run.record.update(stage="sessions-wait"))
        if run.lock and not run.lock.held:  # its session ended (a server restart): not alone any more
            raise RunbookError("サーバーのロックのセッションが切れました（サーバーの再起動など）。"
                               "アプリは止めていません", "サーバーの状態を確かめてから再実行")
        try:
            append_started(settings.worklog_path, entry, stage="swap")
            run.record.update(stage="apps-stop")
            run.apps.stop(before_each=run.record.app_stopping)
            faults.kill_point("apps-stopped")
            faults.pause_point("swap")
            run.record.update(stage="swap")
            console.step(f"切り替え: {settings.db_name} → {run.previous}、{run.staging} → {settings.db_name}")
            swap_databases(pg, Swap(settings.db_name, run.staging, run.previous,
                                    mark_text("previous", settings, "replaced by " + run.source.path.name),
                                    run.live.comment, carried), run.facts.version)
        finally:
            run.failed_apps = run.apps.start(on_started=run.record.app_started)
            run.record.update(stage="apps-started" if not run.failed_apps else "apps-failed")
    except BaseException as error:
        _after_failure(run, error)
        raise
    run.settled = True  # swapped, the apps started: what is left is in the journal's list
    entry.details["previous"] = run.previous
    run.record.update(stage="after-swap")
    try:
        return _after_swap(run, summary)
    except (KeyboardInterrupt, SystemExit) as error:
        # the replace is done: an interruption now must not read as "nothing happened"
        raise RunbookError(
            f"置き換えは完了しています（{settings.db_name} は新しい DB、以前の DB は {run.previous}）が、"
            f"その後の確認の途中で{_describe(error)}",
            f"事後確認は済んでいません。アプリを確かめ、元に戻すなら: {run.rollback}",
        ) from None


def _claim_prestaged(run: Replace) -> None:
    """The prestaged database becomes the staging database, its rows checked
    against the manifest; one that fails the check is dropped and the file is
    restored as usual (run.prestage.use is cleared)."""
    settings, pg, console = run.settings, run.pg, run.console
    chosen = run.prestage.use
    assert chosen is not None and run.record is not None
    planned = run.staging  # the staging database of a restore from the file after all

    def from_the_file(warning: str, drop: bool = False) -> None:
        console.warn(f"事前展開 DB {chosen.name} {warning}ファイルから復元します")
        if drop:
            drop_kit_database(pg, chosen.name)
        run.prestage = prestage.Choice()
        run.staging = planned

    run.staging = chosen.name
    run.record.update(stage="prestaged-claim", staging=run.staging, previous=run.previous)
    if not prestage.claim_unchanged(pg, chosen, mark_text("staging", settings,
                                                          f"{run.source.path.name} (prestaged)")):
        return from_the_file("がなくなったか変わりました: ")  # a restore test replaced or dropped it
    faults.pause_point("prestaged-claimed")
    # its creation settings and its rows' statistics (checks.UNTOUCHED), one exec; the
    # settings alone if it cannot be read (gone after all: the fall-back below says so)
    try:
        found, (untouched,) = pg.facts_and(chosen.name, Ask(checks.UNTOUCHED, chosen.name))
    except LostAnswer:
        raise
    except RunbookError:
        found, untouched = pg.facts(chosen.name), None
    made = found.database
    if made is None:  # dropped after its claim (by hand: with the staging mark no restore test drops it)
        return from_the_file("がなくなりました: ")
    unlike = creation_differences(run.live, made)
    if unlike:  # made before the live database changed, or by a kit that did not carry these
        return from_the_file(f"が本番 DB と違う設定で作られています（{'; '.join(unlike)}）: 削除して",
                             drop=True)
    console.step(f"事前展開 DB {chosen.name} を使います（{chosen.created_at} に復元・照合済み。復元は省略）")
    proof = prestage.proven(pg, chosen, run.source,
                            untouched=None if untouched is None else checks.untouched_from(untouched))
    if proof.verdict == "written":
        return from_the_file("は復元テストの後に書き込まれています（行の追加・変更・削除）: 削除して",
                             drop=True)
    run.written_out = proof.written_out
    run.entry.details["prestaged_rows"] = proof.verdict  # untouched: proven without counting
    summary = proof.summary or summarize_database(pg, chosen.name, run.source.table_counts())
    differences = compare_with_manifest(run.source, summary)
    total = sum(summary.tables.values())
    if total != chosen.rows:  # the count the restore test made (the only one under ROW_COUNTS=false)
        differences.append(f"行数合計 {total}（復元テスト時 {chosen.rows}）")
    if not differences:
        run.entry.sha256 = chosen.sha256
        run.entry.details["prestaged"] = chosen.name
        run.counted = summary  # _check_staging takes it (no second count of every table)
        return None
    return from_the_file(f"が記録と一致しません（{'; '.join(differences[:3])}）: 削除して", drop=True)


def _naming_prestaged(run: Replace, error: NoSpace) -> NoSpace:
    """A restore from the file that does not fit: the prestaged databases of this env
    (one more copy of the DB each) are what can go first; say so by name."""
    try:
        found = prestage.prestaged_databases(run.pg, run.settings)
    except RunbookError:
        return error
    if not found:
        return error
    env = run.settings.env
    drops = "、".join(f"invoke restore-drop --env={env} --db={p.name}（{p.file} のもの）" for p in found)
    return NoSpace(error.message,
                   f"事前展開 DB がディスクを DB 1 つ分使っています。この置き換えに使わないなら "
                   f"{drops} で消してから再実行（次の復元テストで作り直されます）。{error.hint}")


def _after_swap(run: Replace, summary: DatabaseSummary) -> ReplaceResult:
    settings, pg, console = run.settings, run.pg, run.console
    faults.kill_point("after-swap")
    _planner_statistics(run)
    if run.failed_apps:  # the journal keeps them: restore-recover starts them
        record_identity(pg, run.entry)
        raise RunbookError(
            f"DB は置き換えましたが、アプリのコンテナを再開できません: {'; '.join(run.failed_apps)}",
            f"invoke restore-recover --env={settings.env} で再開（元に戻すなら: {run.rollback}）",
        )
    try:
        # (the identity, for the next backup's drift check, asked beside it)
        side_by_side(lambda: _check_database_level(run), lambda: record_identity(pg, run.entry))
        # the live database is the staging database renamed: its summary stands
        for line in summary.lines():
            console.step(line.replace(run.staging, settings.db_name, 1))
        run_post_restore_command(settings, settings.db_name, console)
    except RunbookError as error:
        raise RunbookError(
            f"置き換えは完了しましたが、事後確認で失敗しました: {error.message}",
            f"以前の DB は {run.previous} に残っています。元に戻すなら: {run.rollback}",
        ) from None
    console.summary(
        f"置き換え完了: {settings.db_name} ← {run.source.path.name}"
        + (f"（事前展開 DB {run.staging} を使用、復元は省略）" if run.prestage.use else "")
        + f"。以前の DB は {run.previous} に保管。"
        f" 元に戻す: {run.rollback} / 不要になったら: invoke restore-drop --env={settings.env} "
        f"--db={run.previous} --confirm={settings.env}"
    )
    return ReplaceResult(settings.db_name, run.previous, summary)


def _planner_statistics(run: Replace) -> None:
    """Planner statistics for the new database right away (autovacuum would take a
    minute or more): restored with the data when the archive carries them (pg_dump
    18+), else an ANALYZE in the background, so the app is not kept waiting for it."""
    settings, pg, console = run.settings, run.pg, run.console
    if run.source.carries_statistics:
        console.step("プランナー統計はアーカイブから復元済み（ANALYZE は不要）")
        return
    if run.prestage.use and run.prestage.use.analyzed:
        console.step("プランナー統計は事前展開のときに作成済み（ANALYZE は不要）")
        return
    with contextlib.suppress(RunbookError):
        pg.container.start_detached(pg.psql_argv(settings.db_name) + ["-c", "ANALYZE"],
                                    settings.password_environment())
        console.step("プランナー統計の作成（ANALYZE）をバックグラウンドで開始")


def _check_staging(run: Replace) -> DatabaseSummary:
    """The restored database against the manifest (before masking changes rows),
    then masking, then owners and privileges against the live database."""
    settings, pg, console = run.settings, run.pg, run.console
    counted = run.counted
    if counted:  # a prestaged database: no restore since the live database's facts were read
        summary, current = counted, run.facts
        made = None  # its creation settings were compared with the live one's at its claim
    else:  # the staging database's facts read with the live one's: nothing else changes them
        summary, (current, staged) = side_by_side(
            lambda: summarize_database(pg, run.staging, run.source.table_counts()),
            lambda: pg.facts_of(settings.db_name, run.staging))
        made = staged.database
    # the live database's owner, comment and settings as they are now, not as they
    # were before a restore that may have taken hours
    if current.database:
        run.facts = current
    differences = compare_with_manifest(run.source, summary)
    if differences:
        raise RunbookError("復元結果がバックアップ時の記録と一致しません: " + "; ".join(differences[:5]),
                           "ファイルを invoke verify で確認。本番 DB は変更していません")
    if not summary.tables and (run.source.manifest or {}).get("tables"):
        raise RunbookError("復元先にテーブルがありません", "本番 DB は変更していません")
    unlike = [] if counted else (creation_differences(run.live, made) if made
                                 else [f"{run.staging} がありません"])
    if unlike:  # what only CREATE DATABASE sets: the app would sort or store differently
        raise RunbookError(f"復元した DB が本番 DB と違う設定です: {'; '.join(unlike)}",
                           "本番 DB は変更していません。invoke check で DB の設定を確かめる")
    run.summary = summary
    if run.personal:
        run.objects_changed = True
        apply_masking(pg, settings, run.staging, console)
    live = run.live
    if live.owner != settings.db_user:  # the staging DB is the kit user's own
        pg.execute(f"ALTER DATABASE {quote_ident(run.staging)} OWNER TO {quote_ident(live.owner)}",
                   "postgres")
    _match_privileges(run)
    return summary


def _match_privileges(run: Replace) -> None:
    """What the app can do must not change with the replace."""
    settings, pg, console = run.settings, run.pg, run.console
    live_rights, staged_rights = privileges.rights_of_each(pg, settings.db_name, run.staging)
    ownership = run.options.resolved_ownership(run.source, replace=True)
    copy_owners = ownership == "live"
    copy_acl = ownership != "restorer" and (run.options.no_acl
                                            or not run.options.archive_has_acl(run.source))
    statements = privileges.copy_statements(live_rights, staged_rights, copy_owners, copy_acl)
    if statements:
        console.step(f"所有者・権限を稼働中の DB と同じにします（{len(statements)} 文）")
        run.objects_changed = True
        privileges.apply(pg, run.staging, statements)
        staged_rights = privileges.rights_of(pg, run.staging)
    differences = privileges.differences(live_rights, staged_rights)
    only_live = sorted(live_rights.keys() - staged_rights.keys())
    only_new = sorted(staged_rights.keys() - live_rights.keys())
    if only_live or only_new:
        console.step(f"稼働中の DB にだけある: {len(only_live)} 件、戻すデータにだけある: {len(only_new)} 件"
                     "（スキーマの違い。権限は比べられません）")
    if not differences:
        return
    run.entry.details["privilege_differences"] = differences[:50]
    if run.options.accept_privilege_changes:
        for line in differences[:10]:
            console.warn(f"権限が変わります（--accept-privilege-changes で承知済み）: {line}")
        return
    raise Refused(
        f"置き換えるとアプリから見える所有者・権限が {len(differences)} 件変わります: "
        + "; ".join(differences[:3]) + "（本番 DB は変更していません）",
        "バックアップ後に権限を変えたなら --accept-privilege-changes（作業ログに記録）、"
        "所有者をそろえるなら --ownership=live")


def _check_database_level(run: Replace) -> None:
    """The new live database is the previous one as a database: its locale, collation,
    tablespace, connection limit, template flag, comment, settings, privileges and owner."""
    new, old = run.pg.facts_of(run.settings.db_name, run.previous)
    if not (new.database and old.database):
        raise RunbookError("置き換え後の DB の状態を確かめられません")
    now, before = new.database, old.database
    _note_collation(run, before, now)
    differences = creation_differences(before, now)
    if sorted(now.settings) != sorted(before.settings):
        differences.append(f"DB 単位の設定 {now.settings} ≠ 以前 {before.settings}")
    if sorted(now.acl_items or []) != sorted(before.acl_items or []) or (
            (now.acl_items is None) != (before.acl_items is None)):
        differences.append(f"DB の権限 {now.acl or '（既定）'} ≠ "
                           f"以前 {before.acl or '（既定）'}")
    if now.owner != before.owner:
        differences.append(f"DB の所有者 {now.owner} ≠ 以前 {before.owner}")
    if now.connection_limit != before.connection_limit:
        differences.append(f"接続数の上限 {now.connection_limit} ≠ 以前 {before.connection_limit}")
    if now.is_template != before.is_template:
        differences.append(f"テンプレート {now.is_template} ≠ 以前 {before.is_template}")
    if now.comment != run.live.comment:  # the previous database carries the kit's mark now
        differences.append(f"DB のコメント {now.comment!r} ≠ 以前 {run.live.comment!r}")
    if differences:
        raise RunbookError("新しい DB の設定・権限が以前の DB と違います: " + "; ".join(differences))


def _note_collation(run: Replace, before: DatabaseFacts, now: DatabaseFacts) -> None:
    """The collation library's version (datcollversion, 15+) in the work log: a new one
    means the new database's indexes follow the library the server has now."""
    run.entry.details["collation"] = {
        "locale": describe_locale(before.locale_provider, before.locale, before.collate),
        "version_before": before.collation_version, "version_after": now.collation_version}
    versions = before.collation_version, now.collation_version
    if all(versions) and versions[0] != versions[1]:
        run.console.warn(
            f"照合順序のライブラリの版が以前の DB（{before.collation_version}）と新しい DB"
            f"（{now.collation_version}）で違います。新しい DB の索引は今の版で作られています"
            "（並び順が変わる文字があれば、以前の DB は REINDEX が必要だった状態です）")


def _after_failure(run: Replace, error: BaseException) -> None:
    """Say exactly what state things are in; remove what a failed run made. Only a
    run that gets to the end of this has put things right (run.settled): an
    interruption in here keeps the journal for restore-recover."""
    settings, pg = run.settings, run.pg
    swapped = swap_committed(pg, run.staging, run.previous)
    if swapped:
        run.entry.details["previous"] = run.previous
        run.settled = True  # the apps still stopped, if any, stay in the journal
        raise RunbookError(
            f"切り替えは完了しています（{settings.db_name} は新しい DB、以前の DB は {run.previous}）が、"
            f"その後に失敗しました: {_describe(error)}。{_still_stopped(run)}",
            (f"invoke restore-recover --env={settings.env} でアプリを再開。" if _stopped(run) else "")
            + f"元に戻すなら: {run.rollback}",
        ) from error
    kept = run.prestage.use if isinstance(error, Refused) and swapped is False else None
    if kept and run.objects_changed:  # no longer what its mark says: a retry with other
        kept = None                   # --ownership / --no-acl would take it as restored
        run.console.step(f"事前展開 DB {run.staging} は所有者・権限を変えたため残しません"
                         "（再実行はファイルから復元します）")
    left = None
    if kept:  # refused before any row changed: the prestaged database stays for the retry
        left = cleanup_step(f"事前展開 DB {kept.name} を元に戻す", lambda: prestage.put_back(pg, kept),
                            run.console)
        if not left:
            run.console.step(f"事前展開 DB {kept.name} は閉じて残しました（再実行でも使えます）")
    retained = None
    if not kept and swapped is False and isinstance(error, Blocked) and _retainable(run):
        retained = _retain(run)
    if (not kept or left) and not retained:
        left = cleanup_step(f"検証用 DB {run.staging} の削除", lambda: drop_kit_database(pg, run.staging),
                            run.console)
    closed = swapped is not None and live_closed(pg, settings.db_name)
    if swapped is None or left or _stopped(run) or closed:
        state = ("不明（サーバーに問い合わせできません）" if swapped is None
                 else "元のデータのままですが接続を受け付けない状態" if closed else "元のまま")
        raise RunbookError(
            f"置き換えに失敗しました: {_describe(error)}。本番 DB {settings.db_name} は{state}。"
            + (f" {run.staging} が残っています"
               f"（invoke restore-drop --env={settings.env} --db={run.staging}）。" if left else "")
            + _still_stopped(run),
            f"invoke restore-recover --env={settings.env} で確認・修復",
        ) from error
    run.settled = True
    if retained:
        assert isinstance(error, Blocked)
        raise Blocked(error.message,
                      f"{error.hint}。復元した DB は事前展開 DB {retained} として閉じて残しました:"
                      " 同じ --file の再実行は復元を省きます（使わないなら invoke restore-drop "
                      f"--env={settings.env} --db={retained}）") from None


def _retainable(run: Replace) -> bool:
    """Is the staging database still exactly the file restored (so a retry may claim it)?"""
    source = run.source
    return (run.summary is not None and not run.objects_changed and run.options.prestaged
            and bool(run.entry.sha256) and run.entry.sha256 == source.expected_sha256
            and source.env in (None, run.settings.env))


def _retain(run: Replace) -> str | None:
    """The staging database, refused for a state that can pass (swap.Blocked), kept as a
    prestaged database of the file: the retry claims it instead of restoring again."""
    assert run.summary is not None
    flags = prestage.restore_flags(run.source, run.options, replace=True)
    rows = sum(run.summary.tables.values())
    try:
        return prestage.retain(run.pg, run.settings, prestage.Restored(
            run.staging, run.source, run.entry.sha256 or "", flags, rows))
    except RunbookError as failure:
        run.console.warn(f"復元した DB {run.staging} を再実行用に残せません（{failure.message}）。削除します")
        return None


def _stopped(run: Replace) -> list[str]:
    """The apps the run stopped that do not run again (the journal's list)."""
    return run.record.apps_stopped if run.record else []


def _still_stopped(run: Replace) -> str:
    names = _stopped(run)
    if not names:
        return ""
    errors = f"（{'; '.join(run.failed_apps)}）" if run.failed_apps else ""
    return (f" 停止したままのアプリ: {', '.join(names)}{errors}"
            f"（invoke restore-recover --env={run.settings.env} で起動）。")


def _describe(error: BaseException) -> str:
    """The failure in words: an interruption has no message of its own."""
    if isinstance(error, KeyboardInterrupt):
        return "中断されました（Ctrl-C）"
    if isinstance(error, SystemExit):
        return f"終了シグナルで中断されました（終了コード {error.code}）"
    return str(error) or type(error).__name__
