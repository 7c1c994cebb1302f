"""Backups: make, verify, list, prune, pin and accept (``pgrunbook.backup``, ``store``)."""

from __future__ import annotations

import sys

from invoke import Exit

from pgrunbook.cli import guarded, print_lines, settings_for, task
from tasks_by_area.common import ENV_HELP, ROOT, lazy


@task(
    help={
        "env": ENV_HELP,
        "no_owner": "所有者を保存しない（pg_dump --no-owner）。役割が違う DB に戻すとき",
        "no_acl": "権限（GRANT）を保存しない（pg_dump --no-acl）",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
        "label": "ファイル名とマニフェストに付けるラベル（例: fy2025-close, release-2026-04）",
        "keep": "この期間・日付まで prune で消さない（例: 10y, 7y, 18m, 2036-03-31）",
    }
)
def backup(c, env=None, no_owner=False, no_acl=False, dry_run=False, label=None, keep=None):
    """フルバックアップ（カスタム形式 pg_dump -F c）を backups/<env>/ に作成する。

    前回の正常なバックアップと内容（テーブル・行数・DB の同一性）を比べ、急に減っていれば
    疑わしいバックアップとして残し、警告して終了コード 3 で終わる。
    """
    _backup(env, lazy.backup_dump.BackupRequest("custom", no_owner, no_acl, dry_run, label, keep))


@task(
    name="backup-sql",
    help={
        "env": ENV_HELP,
        "no_owner": "所有者を保存しない（pg_dump --no-owner）",
        "no_acl": "権限（GRANT）を保存しない（pg_dump --no-acl）",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
        "label": "ファイル名とマニフェストに付けるラベル（例: fy2025-close）",
        "keep": "この期間・日付まで prune で消さない（例: 10y, 7y, 18m, 2036-03-31）",
    },
)
def backup_sql(c, env=None, no_owner=False, no_acl=False, dry_run=False, label=None, keep=None):
    """SQL 形式（pg_dump -F p）のバックアップを作成する（psql で復元できる）。"""
    _backup(env, lazy.backup_dump.BackupRequest("plain", no_owner, no_acl, dry_run, label, keep))


def _backup(env, request):
    # a dry run only prints commands: it needs no engine
    settings, console = settings_for(ROOT, env, resolve=not request.dry_run, task=request.task)
    result = guarded(lambda: lazy.backup_dump.run_backup(settings, request, console), console)
    if isinstance(result, list):
        print_lines(result)
    else:
        console.result(str(result.path))
        if result.manifest.get("suspect"):
            raise Exit(code=lazy.store_drift.SUSPECT_EXIT_CODE)


@task(
    name="backup-globals",
    help={
        "env": ENV_HELP,
        "with_role_passwords": "ロールのパスワード（ハッシュ）も保存する（既定: 保存しない）",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
    },
)
def backup_globals(c, env=None, with_role_passwords=False, dry_run=False):
    """ロール等のクラスタ全体の定義（pg_dumpall --globals-only）を保存する。pg_dump には含まれない。"""
    settings, console = settings_for(ROOT, env, resolve=not dry_run, task="backup-globals")
    result = guarded(
        lambda: lazy.backup_globals.run_backup_globals(
            settings, with_role_passwords=with_role_passwords, dry_run=dry_run, console=console
        ),
        console,
    )
    if isinstance(result, list):
        print_lines(result)
    else:
        console.result(str(result.path))


@task(
    help={
        "env": ENV_HELP,
        "file": "検証するファイル（既定: その環境の最新バックアップ）",
        "restore_test": "一時 DB に実際に復元し、マニフェストの行数と照合してから削除する",
    }
)
def verify(c, env=None, file=None, restore_test=False):
    """バックアップが本当に使えるか検証する（サイズ・形式・sha256・目次・全体の読み通し）。"""
    # a file check works with the server down (host pg_restore); a restore test needs it
    settings, console = settings_for(ROOT, env, resolve=restore_test,
                                     task="verify-restore-test" if restore_test else None)
    report = guarded(lambda: lazy.backup_verify.verify_backup(settings, file, console), console)
    if restore_test:
        # the restore test, recorded as a drill (time to recover, rows compared) for the report
        guarded(lambda: lazy.restore_drill.run_drill(settings, str(report.path), console), console)
    console.result(str(report.path))


@task(name="list", help={"env": ENV_HELP})
def list_backups(c, env=None):
    """その環境のバックアップ一覧（名前・形式・サイズ・作成日時・検証済みか・チェックサム）。"""
    settings, console = settings_for(ROOT, env)
    items = guarded(lambda: lazy.store_inventory.inventory(settings), console)
    prestaged = lazy.restore.prestaged_by_file(settings, console) if settings.restore_prestage else None
    if sys.stdout.isatty():
        empty = [f"{settings.backup_dir} にバックアップはありません"]
        print_lines(lazy.store_inventory.table(items, prestaged) if items else empty)
    else:
        print_lines(lazy.store_inventory.plain_lines(items, prestaged))


@task(
    help={
        "env": ENV_HELP,
        "dry_run": "何も削除せず、保持・削除の判定だけを表示する",
    }
)
def prune(c, env=None, dry_run=False):
    """保持期間（RETENTION_*）を過ぎたバックアップを削除する（キットが作ったものだけ。オフサイトも）。"""
    settings, console = settings_for(ROOT, env)
    guarded(lambda: lazy.backup_prune.prune(settings, dry_run=dry_run, console=console), console)
    if settings.offsite_bucket:
        guarded(lambda: lazy.offsite_prune.prune_remote(settings, dry_run, console), console)


@task(
    help={
        "env": ENV_HELP,
        "file": "固定するバックアップ",
        "keep": "保管期限: 今日からの期間か日付（例: 10y, 7y, 18m, 2036-03-31）",
        "label": "マニフェストに記録するラベル（例: fy2025-close。ファイル名は変えない）",
    }
)
def pin(c, env=None, file=None, keep=None, label=None):
    """既存のバックアップを期限まで固定する（prune・offsite-prune で消えない）。年度締め・リリース前に。"""
    settings, console = settings_for(ROOT, env)
    path, until = guarded(lambda: lazy.backup_marks.pin(settings, file, keep, label, console), console)
    lazy.offsite_lock.extend_to_pin(settings, path, until, console)  # a copy already offsite keeps it too
    console.result(str(path))


@task(help={"env": ENV_HELP, "file": "固定を外すバックアップ"})
def unpin(c, env=None, file=None):
    """バックアップの固定を外す（次の prune から通常の保持期間の規則に従う）。"""
    settings, console = settings_for(ROOT, env)
    path = guarded(lambda: lazy.backup_marks.unpin(settings, file, console), console)
    console.result(str(path))


@task(
    name="accept-drift",
    help={
        "env": ENV_HELP,
        "file": "承認する疑わしいバックアップ（invoke list で「疑わしい」のもの）",
        "reason": "減った理由（必須。作業ログに実行者と一緒に残る）",
    },
)
def accept_drift(c, env=None, file=None, reason=None):
    """疑わしいバックアップ（行数の急減・別 DB）を、意図した変化として承認する。以後の比較の基準になる。"""
    settings, console = settings_for(ROOT, env)
    path = guarded(lambda: lazy.backup_marks.accept_drift(settings, file, reason, console), console)
    console.result(str(path))


TASKS = (backup, backup_sql, backup_globals, verify, list_backups, prune, pin, unpin, accept_drift)
