"""pgrunbook: the knot DB backup/restore runbook as invoke tasks.

Thin by design: each task parses its arguments, calls the pgrunbook package
and prints the result. Run ``invoke --list`` for the tasks, ``invoke --help
TASK`` for one task's options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Collection, Exit, task

from pgrunbook import backup as backup_module
from pgrunbook.cli import LazyModule, guarded, print_lines, settings_for
from pgrunbook.console import Console, human_size

# imported when a task first needs them (a backup's start-up stays short)
docs_module = LazyModule("docs")
encryption_module = LazyModule("encryption")
inventory = LazyModule("inventory")
retention = LazyModule("retention")
roles = LazyModule("roles")
schedule = LazyModule("schedule")
offsite_module = LazyModule("offsite")
restore_module = LazyModule("restore")
sandbox_module = LazyModule("sandbox")
verify_module = LazyModule("verify")

ROOT = Path(__file__).resolve().parent
ENV_HELP = "対象環境（必須）: .env.<env> の <env>。例: prod, dev"


@task(
    help={
        "env": ENV_HELP,
        "no_owner": "所有者を保存しない（pg_dump --no-owner）。役割が違う DB に戻すとき",
        "no_acl": "権限（GRANT）を保存しない（pg_dump --no-acl）",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
    }
)
def backup(c, env=None, no_owner=False, no_acl=False, dry_run=False):
    """フルバックアップ（カスタム形式 pg_dump -F c）を backups/<env>/ に作成する。"""
    _backup(env, "custom", no_owner, no_acl, dry_run)


@task(
    name="backup-sql",
    help={
        "env": ENV_HELP,
        "no_owner": "所有者を保存しない（pg_dump --no-owner）",
        "no_acl": "権限（GRANT）を保存しない（pg_dump --no-acl）",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
    },
)
def backup_sql(c, env=None, no_owner=False, no_acl=False, dry_run=False):
    """SQL 形式（pg_dump -F p）のバックアップを作成する（psql で復元できる）。"""
    _backup(env, "plain", no_owner, no_acl, dry_run)


def _backup(env, fmt, no_owner, no_acl, dry_run):
    settings, console = settings_for(ROOT, env)
    result = guarded(
        lambda: backup_module.run_backup(
            settings, fmt, no_owner=no_owner, no_acl=no_acl, dry_run=dry_run, console=console
        ),
        console,
    )
    if isinstance(result, list):
        print_lines(result)
    else:
        console.result(str(result.path))


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
    settings, console = settings_for(ROOT, env)
    result = guarded(
        lambda: roles.run_backup_globals(
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
    settings, console = settings_for(ROOT, env)
    report = guarded(lambda: verify_module.verify_backup(settings, file, console), console)
    if restore_test:
        guarded(lambda: restore_module.restore_test(settings, str(report.path), console), console)
    console.result(str(report.path))


RESTORE_HELP = {
    "no_owner": "所有者を復元しない（pg_restore --no-owner）。既定: バックアップ時の指定に従う",
    "no_acl": "権限（GRANT）を復元しない（pg_restore --no-acl）",
    "jobs": "pg_restore の並列数（既定: コンテナの CPU 数）",
}


def _restore_options(no_owner, no_acl, jobs):
    return restore_module.RestoreOptions(
        no_owner=True if no_owner else None, no_acl=no_acl, jobs=int(jobs) if jobs else None
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
def restore_scratch(c, env=None, file=None, db=None, replace=False, no_owner=False, no_acl=False,
                    jobs=None):
    """B. 別 DB に戻して安全に確認する（本番 DB には触れない）。"""
    settings, console = settings_for(ROOT, env)
    # no --file: the newest verified custom-format backup, named in a step line
    file = file or str(guarded(lambda: verify_module.resolve_file(settings, None, console), console))
    result = guarded(
        lambda: restore_module.restore_scratch(
            settings, file, db, replace, _restore_options(no_owner, no_acl, jobs), console
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
        **RESTORE_HELP,
    },
)
def restore_replace(c, env=None, file=None, confirm=None, approved_by=None, no_owner=False,
                    no_acl=False, jobs=None):
    """A. 既存 DB を置き換える（別 DB に復元・確認してから名前を切り替え、以前の DB は保管）。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(
        lambda: restore_module.restore_replace(
            settings, file, confirm, approved_by, _restore_options(no_owner, no_acl, jobs), console
        ),
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
    settings, console = settings_for(ROOT, env)
    if not previous:
        raise Exit(f"エラー: --previous が必要です → invoke restore-list --env={env} で確認", code=2)
    guarded(lambda: restore_module.restore_rollback(settings, previous, confirm, console), console)


@task(name="restore-list", help={"env": ENV_HELP})
def restore_list(c, env=None):
    """キットが作った DB（検証用・置き換え前など）を一覧する。"""
    settings, console = settings_for(ROOT, env)
    databases = guarded(lambda: restore_module.list_kit_databases(settings, console), console)
    for db in databases:
        console.result(f"{db.name}\t{db.role}\t{human_size(db.size)}\t{db.created_at}")
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
    settings, console = settings_for(ROOT, env)
    if not db:
        raise Exit(f"エラー: --db が必要です → invoke restore-list --env={env} で確認", code=2)
    guarded(lambda: restore_module.drop_database(settings, db, confirm, console), console)


@task(name="sandbox-up", help={"env": "練習用の環境（保護環境は不可）。例: dev"})
def sandbox_up(c, env=None):
    """練習用 PostgreSQL コンテナをサンプルデータ入りで起動する（DB_CONTAINER の名前で）。"""
    settings, console = settings_for(ROOT, env)
    guarded(lambda: sandbox_module.sandbox_up(settings, console), console)


@task(name="sandbox-down", help={"env": "sandbox-up で作った環境。例: dev"})
def sandbox_down(c, env=None):
    """sandbox-up で作ったコンテナを削除する（キットが作ったもの以外は触らない）。"""
    settings, console = settings_for(ROOT, env)
    guarded(lambda: sandbox_module.sandbox_down(settings, console), console)


@task(
    help={
        "size_mb": "作成するデータベースの大きさ（MB）",
        "rounds": "手作業とキットを交互に何回ずつ測るか",
        "image": "使う PostgreSQL イメージ（既定: PGRUNBOOK_TEST_IMAGE または postgres:15）",
        "output": "レポート（bench.json / bench.md）の出力先",
    }
)
def bench(c, size_mb=900, rounds=3, image=None, output="bench-results"):
    """手順書の手作業とキットの速度・メモリを使い捨てコンテナで比較する。"""
    from pgrunbook import bench as bench_module

    argv = ["--size-mb", str(size_mb), "--rounds", str(rounds), "--output", output]
    if image:
        argv += ["--image", image]
    raise Exit(code=bench_module.main(argv))


@task(help={"port": "プレビューのポート番号（127.0.0.1 でだけ待ち受け）"})
def docs(c, port=8000):
    """手順書サイトをプレビューする（mkdocs serve。編集すると自動で再読み込み）。--env は不要。"""
    console = Console()
    console.step(f"プレビュー: http://127.0.0.1:{port}/（Ctrl-C で終了）")
    guarded(lambda: docs_module.serve_site(ROOT, int(port)), console)


@task(name="docs-build", help={"output": "出力先ディレクトリ（既定: このチェックアウトの site/）"})
def docs_build(c, output=None):
    """手順書サイトを strict でビルドする。公開は site/ をファイルサーバーへコピーするだけ。--env は不要。"""
    console = Console()
    target = Path(output).resolve() if output else ROOT / "site"
    index = guarded(lambda: docs_module.build_site(ROOT, target), console)
    console.result(str(index))


@task(name="list", help={"env": ENV_HELP})
def list_backups(c, env=None):
    """その環境のバックアップ一覧（名前・形式・サイズ・作成日時・検証済みか・チェックサム）。"""
    settings, console = settings_for(ROOT, env)
    items = guarded(lambda: inventory.inventory(settings), console)
    if sys.stdout.isatty():
        empty = [f"{settings.backup_dir} にバックアップはありません"]
        print_lines(inventory.table(items) if items else empty)
    else:
        print_lines(inventory.plain_lines(items))


@task(
    help={
        "env": ENV_HELP,
        "max_age": "最新の検証済みバックアップの許容経過時間（例: 26h, 90m, 2d。既定 26h）",
    }
)
def status(c, env=None, max_age="26h"):
    """監視用に 1 行表示: 0=新しい検証済みバックアップあり、1=古い、2=ない。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(
        lambda: inventory.freshness(settings, inventory.parse_duration(max_age)), console
    )
    console.result(result.line)
    if result.exit_code:
        raise Exit(code=result.exit_code)


@task(
    help={
        "env": ENV_HELP,
        "dry_run": "何も削除せず、保持・削除の判定だけを表示する",
    }
)
def prune(c, env=None, dry_run=False):
    """保持期間（RETENTION_*）を過ぎたバックアップを削除する（キットが作ったものだけ。オフサイトも）。"""
    settings, console = settings_for(ROOT, env)
    guarded(lambda: retention.prune(settings, dry_run=dry_run, console=console), console)
    if settings.offsite_bucket:
        guarded(lambda: offsite_module.prune_remote(settings, dry_run, console), console)


@task(
    help={
        "env": ENV_HELP,
        "install": "このユーザーの crontab に登録する（# BEGIN/END pgrunbook <env> の間。再実行しても同じ）",
        "remove": "crontab から pgrunbook <env> のブロックを削除する",
        "mailto": "失敗を知らせるメールの宛先（cron の MAILTO。既定 root、空で送信なし）",
        "user": "root が別ユーザーの crontab を扱うとき（crontab -u）",
        "example": "crontab.example の内容（見本）を表示する",
    }
)
def crontab(c, env=None, install=False, remove=False, mailto="root", user=None, example=False):
    """定期実行（バックアップ・検証・リストア試験・削除・鮮度チェック）の crontab を表示・登録する。"""
    if example:
        sys.stdout.write(schedule.example_text())
        return
    settings, console = settings_for(ROOT, env)
    target = guarded(lambda: schedule.target_for(settings, ROOT, mailto), console)
    block = schedule.render(target)
    if remove:
        removed = guarded(lambda: schedule.remove(settings.env, user), console)
        console.summary(f"crontab から pgrunbook {settings.env} を削除しました" if removed
                        else f"crontab に pgrunbook {settings.env} はありません（変更なし）")
    elif install:
        changed = guarded(
            lambda: schedule.install(block, settings.env, user, settings.backup_dir), console
        )
        console.summary(f"crontab に pgrunbook {settings.env} を登録しました（crontab -l で確認）"
                        if changed else f"crontab の pgrunbook {settings.env} は登録済みです（変更なし）")
    else:
        print_lines(block)


namespace = Collection(
    backup,
    backup_sql,
    backup_globals,
    verify,
    list_backups,
    status,
    prune,
    crontab,
    restore_scratch,
    restore_replace,
    restore_rollback,
    restore_list,
    restore_drop,
    sandbox_up,
    sandbox_down,
    bench,
    docs,
    docs_build,
)


# --- offsite copies (issue 7) -------------------------------------------------


@task(
    name="offsite-push",
    help={
        "env": ENV_HELP,
        "file": "送るバックアップ（既定: verify に合格した最新のもの。検証前のものは送らない）",
    },
)
def offsite_push(c, env=None, file=None):
    """verify 済みのバックアップを age で暗号化し、S3 互換ストレージへ送る（上書きしない）。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(lambda: offsite_module.push_backup(settings, file, console), console)
    console.result(result.url)


@task(name="offsite-list", help={"env": ENV_HELP})
def offsite_list(c, env=None):
    """オフサイトにあるその環境のバックアップを古い順に表示する（日時・サイズ・sha256）。"""
    settings, console = settings_for(ROOT, env)
    location, backups = guarded(lambda: offsite_module.list_remote(settings), console)
    print_lines([offsite_module.describe(b) for b in backups])
    console.summary(f"{location}: {len(backups)} 件")


@task(
    name="offsite-pull",
    help={
        "env": ENV_HELP,
        "key": "復号に使う age の秘密鍵ファイル（必須。オフラインで保管しているもの）",
        "name": "取得するバックアップ名（既定: 最新。offsite-list で確認）",
    },
)
def offsite_pull(c, env=None, key=None, name=None):
    """オフサイトのコピーを取得・復号・sha256 照合し、その環境のバックアップ置き場に戻す。"""
    settings, console = settings_for(ROOT, env)
    path = guarded(lambda: offsite_module.pull_backup(settings, key, name, console), console)
    console.result(str(path))


@task(
    name="offsite-prune",
    help={"env": ENV_HELP, "dry_run": "削除せず、削除予定のものを表示する"},
)
def offsite_prune(c, env=None, dry_run=False):
    """OFFSITE_RETENTION_DAYS より古いオフサイトコピーを削除する（最新の 1 つは常に残す）。"""
    settings, console = settings_for(ROOT, env)
    doomed = guarded(lambda: offsite_module.prune_remote(settings, dry_run, console), console)
    print_lines([offsite_module.describe(b) for b in doomed])


@task(
    iterable=["recipient"],
    help={
        "file": "暗号化するファイル（出力: <file>.age。上書きしない）",
        "recipient": "宛先の age 公開鍵 age1…（複数回指定可）",
        "env": "--recipient がないとき、この環境の OFFSITE_AGE_RECIPIENTS を使う",
        "out": "出力先（既定: <file>.age）",
    },
)
def encrypt(c, file=None, recipient=None, env=None, out=None):
    """物理メディア用: ファイルを age の公開鍵で暗号化する（秘密鍵は不要）。"""
    console = Console()
    recipients = list(recipient or [])
    if not recipients and env:
        settings, console = settings_for(ROOT, env)
        recipients = list(settings.offsite_age_recipients)
    path, _ = guarded(
        lambda: encryption_module.encrypt_file(
            _required_path(file), recipients, Path(out) if out else None, console
        ),
        console,
    )
    console.result(str(path))


@task(
    help={
        "file": "復号する .age ファイル（出力: .age を除いた名前。上書きしない）",
        "key": "age の秘密鍵ファイル（age-keygen で作ったもの）",
        "out": "出力先（既定: .age を除いた名前）。隣に .sha256 があれば照合する",
    }
)
def decrypt(c, file=None, key=None, out=None):
    """物理メディア用: age で暗号化したファイルを秘密鍵で復号する。"""
    console = Console()
    path, _ = guarded(
        lambda: encryption_module.decrypt_file(
            _required_path(file), key, Path(out) if out else None, console
        ),
        console,
    )
    console.result(str(path))


@task(name="offsite-keygen", help={"out": "秘密鍵を書き出すファイル（0600。既存なら上書きしない）"})
def offsite_keygen(c, out=None):
    """age の鍵を作る（age-keygen と同じ形式）。秘密鍵は DB サーバーに置かず、オフラインで保管する。"""
    console = Console()
    public = guarded(
        lambda: encryption_module.generate_identity(_required_path(out)), console
    )
    console.summary(f"秘密鍵を {out} に書きました。公開鍵を OFFSITE_AGE_RECIPIENTS に設定してください")
    console.result(public)


def _required_path(value):
    from pgrunbook.errors import RunbookError

    if not value:
        raise RunbookError("ファイルが指定されていません", "--file=<パス>（keygen は --out=<パス>）", 2)
    return Path(value).expanduser()


for _offsite_task in (offsite_push, offsite_list, offsite_pull, offsite_prune, encrypt, decrypt,
                      offsite_keygen):
    namespace.add_task(_offsite_task)
