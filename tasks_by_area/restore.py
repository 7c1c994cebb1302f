"""Restores: scratch, replace, rollback, recover, list and drop (``pgrunbook.restore``)."""

from __future__ import annotations

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
    result = guarded(
        lambda: lazy.restore.restore_replace(settings, file, confirm, approved_by, options, console),
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


TASKS = (restore_scratch, restore_replace, restore_rollback, restore_recover, restore_list, restore_drop)
