"""Restores: scratch, replace, rollback, recover, list and drop (``pgrunbook.restore``)."""

from __future__ import annotations

import contextlib
import sys

from invoke import Exit

from pgrunbook.cli import guarded, settings_for, task
from pgrunbook.core.console import human_size
from tasks_by_area.common import ENV_HELP, ROOT, lazy

RESTORE_HELP = {
    "ownership": "オブジェクトの所有者: auto（既定。記録があればバックアップのとおり、なければ置き換えでは"
                 "稼働中の DB と同じ）/ archive / live（稼働中の DB と同じ）/ restorer（すべて DB_USER）",
    "no_owner": "--ownership=restorer と同じ（pg_restore --no-owner）",
    "no_acl": "権限（GRANT）を復元しない（pg_restore --no-acl。置き換えでは稼働中の DB の権限を写す）",
    "jobs": "pg_restore の並列数（既定: RESTORE_JOBS。auto はコンテナの CPU の半分、最大 4）",
}


def _restore_options(ownership, no_owner, no_acl, jobs, accept_privilege_changes=False,
                     accept_shrink=False):
    chosen = "restorer" if no_owner else (ownership or "auto")
    if chosen not in lazy.restore.OWNERSHIP:
        raise Exit(f"エラー: --ownership={chosen} は使えません → {' / '.join(lazy.restore.OWNERSHIP)}",
                   code=2)
    return lazy.restore.RestoreOptions(
        ownership=chosen, no_acl=no_acl, jobs=int(jobs) if jobs else None,
        accept_privilege_changes=accept_privilege_changes, accept_shrink=accept_shrink,
    )


@task(
    name="restore-scratch",
    help={
        "env": ENV_HELP,
        "file": "戻すファイル（既定: 検証済みで最新のカスタム形式のバックアップ）",
        "db": "復元先 DB 名（既定: <DB_NAME>_restore_<YYYYMMDD>）",
        "replace": "同名の検証用 DB（キットが作ったもの）があれば作り直す",
        **RESTORE_HELP,
    },
)
def restore_scratch(c, env=None, file=None, db=None, replace=False, ownership=None, no_owner=False,
                    no_acl=False, jobs=None):
    """B. 別 DB に戻して安全に確認する（本番 DB には触れない）。"""
    settings, console = settings_for(ROOT, env, resolve=True, task="restore-scratch")
    result = guarded(
        lambda: lazy.restore.restore_scratch(
            settings, file, db, replace, _restore_options(ownership, no_owner, no_acl, jobs), console
        ),
        console,
    )
    console.result(result.database)


@task(
    name="restore-replace",
    help={
        "env": ENV_HELP,
        "file": "戻すファイル（必須）",
        "confirm": "端末がないときの確認: 対象の環境名（例: --confirm=dev）",
        "approved_by": "他の環境のバックアップを保護環境に戻すときの承認者名（作業ログに記録）",
        "accept_privilege_changes": "置き換えでアプリから見える所有者・権限が変わることを承知で進める"
                                    "（作業ログに記録）",
        "accept_shrink": "戻すデータが現在の DB より大幅に少ない（テーブルの消失・行数の急減）ことを"
                         "承知で進める（端末なしで必要。作業ログに記録）",
        "prestaged": "事前展開 DB（RESTORE_PRESTAGE）があれば使う。--no-prestaged でファイルから復元",
        **RESTORE_HELP,
    },
)
def restore_replace(c, env=None, file=None, confirm=None, approved_by=None, ownership=None,
                    no_owner=False, no_acl=False, jobs=None, accept_privilege_changes=False,
                    accept_shrink=False, prestaged=True):
    """A. 既存 DB を置き換える（別 DB に復元・確認してから名前を切り替え、以前の DB は保管）。"""
    settings, console = settings_for(ROOT, env, apps=True, task="restore-replace")
    options = _restore_options(ownership, no_owner, no_acl, jobs, accept_privilege_changes, accept_shrink)
    options.prestaged = prestaged
    request = lazy.restore.ReplaceRequest(file, confirm, approved_by)
    result = guarded(
        lambda: lazy.restore.restore_replace(settings, request, options, console),
        console,
    )
    console.result(result.previous)


@task(
    name="restore-rollback",
    help={
        "env": ENV_HELP,
        "previous": "戻す先: restore-replace が保管した以前の DB 名",
        "confirm": "端末がないときの確認: 対象の環境名",
    },
)
def restore_rollback(c, env=None, previous=None, confirm=None):
    """restore-replace を取り消し、保管しておいた以前の DB に戻す。"""
    settings, console = settings_for(ROOT, env, resolve=True, task="restore-rollback")
    if not previous:
        raise Exit(f"エラー: --previous が必要です → invoke restore-list --env={env} で確認", code=2)
    rolled = guarded(lambda: lazy.restore.restore_rollback(settings, previous, confirm, console),
                     console)
    console.result(rolled)


@task(
    name="restore-recover",
    help={
        "env": ENV_HELP,
        "confirm": "端末がないときの確認: 対象の環境名",
        "dry_run": "直すものを表示し、手作業のコマンドを出すだけ（何も変更しない）",
    },
)
def restore_recover(c, env=None, confirm=None, dry_run=False):
    """中断された置き換え・ロールバックの残したもの（閉じた DB・staging・停止中のアプリ等）を直す

    端末では環境名を入力、端末なしは --confirm=E。--dry-run で手作業のコマンドを表示。"""
    settings, console = settings_for(ROOT, env, resolve=True, task="restore-recover")
    done = guarded(lambda: lazy.restore.restore_recover(settings, confirm, console, dry_run), console)
    if not dry_run:
        console.result(f"{len(done)} 件修復")


@task(name="restore-list", help={"env": ENV_HELP})
def restore_list(c, env=None):
    """キットが作った DB（検証用・置き換え前など）を一覧する。"""
    settings, console = settings_for(ROOT, env, resolve=True)
    databases = guarded(lambda: lazy.restore.list_kit_databases(settings, console), console)
    for db in databases:
        console.result(f"{db.name}\t{db.role}\t{human_size(db.size)}\t{db.created_at}"
                       + (f"\t{db.note}" if db.note else ""))
    console.summary(f"{len(databases)} 件")


@task(
    name="restore-drop",
    help={
        "env": ENV_HELP,
        "db": "削除する DB（キットが作ったものだけ）",
        "confirm": "置き換え前の DB を消すときの確認: 対象の環境名",
    },
)
def restore_drop(c, env=None, db=None, confirm=None):
    """キットが作った DB（検証用・置き換え前）を削除する。本番 DB は削除できない。"""
    settings, console = settings_for(ROOT, env, resolve=True, task="restore-drop")
    if not db:
        raise Exit(f"エラー: --db が必要です → invoke restore-list --env={env} で確認", code=2)
    guarded(lambda: lazy.restore.drop_database(settings, db, confirm, console), console)


PARTIAL_HELP = {
    "env": ENV_HELP,
    "file": "比べる・戻すバックアップ（.dump / .sql）",
    "table": ("テーブル（スキーマ.テーブル。複数可: --table=public.votes --table=public.members。"
              "空白・ドットを含む名前は二重引用符で: --table='\"My Schema\".\"Odd.Name\"'）"),
    "where": "行の条件（SQL。例: --where=\"topic = '2025年度予算案'\"）。"
             "バックアップか稼働中のどちらかで満たす行",
    "key": "主キーのないテーブルで行を特定する列（カンマ区切り。重複・NULL があれば止める）",
    "as_of": "PITR（pgBackRest）でこの時刻に戻した別コンテナから（例: '2026-01-28 14:05'）。--file の代わり",
}


@contextlib.contextmanager
def _rows_as_of(settings, as_of, console, task_name):
    """--as-of: a PITR copy at that time (pitr.scratch), handed to restore as a row source
    and removed after. Composed here: restore and pitr are siblings that never import each other."""
    if not as_of:
        yield None
        return
    scratch_module = lazy.pitr_scratch
    with scratch_module.at_time(settings, as_of, console, task_name) as (scratch, server):
        when = scratch_module.target_literal(scratch.target)
        yield lazy.restore_rowsource.handed(
            server, settings.db_name, f"PITR {when}（{scratch.name}）", as_of=when, scratch=scratch.name,
            backup_set=scratch.backup_set)


def _partial_options(table, mode="missing", where=None, key=None, fire_triggers=False, confirm=None,
                     approved_by=None, file=None, as_of=None):
    if file and as_of:
        raise Exit("エラー: --file と --as-of はどちらか 1 つ → バックアップのファイルか PITR の時刻か",
                   code=2)
    return lazy.restore_partial.PartialOptions(
        tables=tuple(table or ()), mode=mode, where=where, key=key, fire_triggers=fire_triggers,
        confirm_env=confirm, approved_by=approved_by, file=file)


@task(
    name="restore-diff",
    iterable=["table"],
    help={**PARTIAL_HELP,
          "file": "比べるバックアップ（既定: 検証済みで最新のもの）",
          "format": "text（既定）か json（標準出力に JSON）"},
)
def restore_diff(c, env=None, file=None, table=None, where=None, key=None, as_of=None, format="text"):  # noqa: A002
    """戻すと何が変わるかを表示する（何も変更しない）。終了コード: 0 同じ、1 違う、2 問題。
    --table なしは DB 全体（テーブル・行数・列・所有者・権限）、あればキーごとの行の差。"""
    settings, console = settings_for(ROOT, env, resolve=True, task="restore-diff")
    if format not in ("text", "json"):
        raise Exit(f"エラー: --format={format} は使えません → text か json", code=2)
    options = _partial_options(table, where=where, key=key, file=file, as_of=as_of)

    def run():
        with _rows_as_of(settings, as_of, console, "restore-diff") as handed:
            return lazy.restore_diff.restore_diff(settings, options, console, handed)

    try:
        result = guarded(run, console)
    except Exit as stop:  # diff(1): any trouble is 2
        raise Exit(stop.message, code=2 if stop.code else 0) from None
    if format == "json":
        sys.stdout.write(result.as_json() + "\n")
    else:
        for line in result.lines():
            console.result(line)
    if result.different:
        raise Exit(code=1)


@task(
    name="restore-partial",
    iterable=["table"],
    help={**PARTIAL_HELP,
          "mode": "missing（消えた行を戻す）/ changed（変わった行も戻す）/ exact（その後に増えた行も消す）",
          "confirm": "端末がないときの確認: 対象の環境名",
          "approved_by": "他の環境のバックアップを保護環境に戻すときの承認者名（作業ログに記録）",
          "fire_triggers": "戻す行でアプリのトリガー（監査ログなど）を動かす"
                           "（既定: 動かさず、バックアップの行のまま）"},
)
def restore_partial(c, env=None, file=None, table=None, where=None, mode=None, key=None, as_of=None,
                    confirm=None, approved_by=None, fire_triggers=False):
    """C. 一部だけ戻す: 指定したテーブルの行をバックアップ（または PITR の時刻）から稼働中の DB に戻す。
    アプリは止めない。差を表示して確認してから 1 トランザクションで。取り消しは restore-partial-undo。"""
    settings, console = settings_for(ROOT, env, resolve=True, task="restore-partial")
    if not mode:
        raise Exit("エラー: --mode が必要です → missing / changed / exact", code=2)
    options = _partial_options(table, mode, where, key, fire_triggers, confirm, approved_by, file, as_of)

    def run():
        with _rows_as_of(settings, as_of, console, "restore-partial") as handed:
            return lazy.restore_partial.restore_partial(settings, options, console, handed)

    result = guarded(run, console)
    console.result(getattr(result, "run", "") or "変更なし")


@task(
    name="restore-partial-undo",
    help={"env": ENV_HELP,
          "run": "取り消す実行（restore-partial が表示した run。既定: 直近の実行）",
          "confirm": "端末がないときの確認: 対象の環境名",
          "fire_triggers": "取り消しでアプリのトリガーを動かす（既定: 動かさない）"},
)
def restore_partial_undo(c, env=None, run=None, confirm=None, fire_triggers=False):
    """一部だけ戻した行を元に戻す（restore-partial の取り消し）。
    戻した行がその後に変わっていれば、その行を示して何もしない。"""
    settings, console = settings_for(ROOT, env, resolve=True, task="restore-partial-undo")
    guarded(lambda: lazy.restore_undo.restore_partial_undo(settings, run, confirm, fire_triggers, console),
            console)


TASKS = (restore_scratch, restore_replace, restore_rollback, restore_recover, restore_list, restore_drop,
         restore_diff, restore_partial, restore_partial_undo)
