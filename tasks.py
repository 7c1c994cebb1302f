"""pgrunbook: the knot DB backup/restore runbook as invoke tasks.

Thin by design: each task parses its arguments, calls the pgrunbook package
and prints the result. Run ``invoke --list`` for the tasks, ``invoke --help
TASK`` for one task's options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Collection, Exit, task

from pgrunbook.backup import dump as backup_module
from pgrunbook.cli import LazyModule, guarded, print_lines, settings_for
from pgrunbook.core.console import Console, human_size

# imported when a task first needs them (a backup's start-up stays short)
docs_module = LazyModule("site.docs")
drill_module = LazyModule("restore.drills")
drift_module = LazyModule("store.drift")
encryption_module = LazyModule("offsite.encryption")
inventory = LazyModule("store.inventory")
metrics_module = LazyModule("monitoring.metrics")
ping_module = LazyModule("monitoring.ping")
retention = LazyModule("backup.prune")
roles = LazyModule("backup.globals")
schedule = LazyModule("monitoring.schedule")
offsite_module = LazyModule("offsite.remote")
restore_module = LazyModule("restore")
sandbox_module = LazyModule("lab.sandbox")
verify_module = LazyModule("backup.verify")

ROOT = Path(__file__).resolve().parent
ENV_HELP = "対象環境（必須）: .env.<env> の <env>。例: prod, dev"


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
    _backup(env, "custom", no_owner, no_acl, dry_run, label, keep)


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
    _backup(env, "plain", no_owner, no_acl, dry_run, label, keep)


def _backup(env, fmt, no_owner, no_acl, dry_run, label=None, keep=None):
    task_name = "backup" if fmt == "custom" else "backup-sql"
    # a dry run only prints commands: it needs no engine
    settings, console = settings_for(ROOT, env, resolve=not dry_run, task=task_name)
    result = guarded(
        lambda: backup_module.run_backup(
            settings, fmt, no_owner=no_owner, no_acl=no_acl, dry_run=dry_run, console=console,
            label=label, keep=keep,
        ),
        console,
    )
    if isinstance(result, list):
        print_lines(result)
    else:
        console.result(str(result.path))
        if result.manifest.get("suspect"):
            raise Exit(code=drift_module.SUSPECT_EXIT_CODE)


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
    # a file check works with the server down (host pg_restore); a restore test needs it
    settings, console = settings_for(ROOT, env, resolve=restore_test,
                                     task="verify-restore-test" if restore_test else None)
    report = guarded(lambda: verify_module.verify_backup(settings, file, console), console)
    if restore_test:
        # the restore test, recorded as a drill (time to recover, rows compared) for the report
        guarded(lambda: drill_module.run_drill(settings, str(report.path), console), console)
    console.result(str(report.path))


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
    if chosen not in restore_module.OWNERSHIP:
        raise Exit(f"エラー: --ownership={chosen} は使えません → {' / '.join(restore_module.OWNERSHIP)}",
                   code=2)
    return restore_module.RestoreOptions(
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
        lambda: restore_module.restore_scratch(
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
        lambda: restore_module.restore_replace(settings, file, confirm, approved_by, options, console),
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
    rolled = guarded(lambda: restore_module.restore_rollback(settings, previous, confirm, console),
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
    done = guarded(lambda: restore_module.restore_recover(settings, confirm, console, dry_run), console)
    if not dry_run:
        console.result(f"{len(done)} 件修復")


@task(name="restore-list", help={"env": ENV_HELP})
def restore_list(c, env=None):
    """キットが作った DB（検証用・置き換え前など）を一覧する。"""
    settings, console = settings_for(ROOT, env, resolve=True)
    databases = guarded(lambda: restore_module.list_kit_databases(settings, console), console)
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
        "compressions": "キットで測る圧縮形式（カンマ区切り。既定: 16 以降は gzip:1,lz4,zstd:1,zstd:3）",
        "dataset": "データ: default（多数のテーブル）か large-tables（大きなテーブル 2 つ）",
        "variants": "キットの置き換えと並べて測る試み（mwm, nosync, nocheckpoint, jobs2。+ でつなぐと両方）",
        "tag": "コンテナ名に入れる語（共有マシンで誰の実行か分かるように）",
        "prestaged": "事前展開した最新バックアップへの置き換え（RESTORE_PRESTAGE）も測る",
    }
)
def bench(c, size_mb=900, rounds=3, image=None, output="bench-results", compressions="",
          dataset="default", variants="", tag="", prestaged=False):
    """手順書の手作業とキットの速度・書き込み停止時間・メモリを使い捨てコンテナで比較する。"""
    from pgrunbook.lab import bench as bench_module

    argv = ["--size-mb", str(size_mb), "--rounds", str(rounds), "--output", output]
    if image:
        argv += ["--image", image]
    if compressions:
        argv += ["--compressions", compressions]
    argv += ["--dataset", dataset] + (["--variants", variants] if variants else []) + (
        ["--tag", tag] if tag else []) + (["--prestaged"] if prestaged else [])
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
    prestaged = restore_module.prestaged_by_file(settings, console) if settings.restore_prestage else None
    if sys.stdout.isatty():
        empty = [f"{settings.backup_dir} にバックアップはありません"]
        print_lines(inventory.table(items, prestaged) if items else empty)
    else:
        print_lines(inventory.plain_lines(items, prestaged))


@task(
    help={
        "env": ENV_HELP,
        "max_age": "最新の検証済みバックアップの許容経過時間（例: 26h, 90m, 2d。既定 26h）",
        "format": "text（既定: 1 行と終了コード 0/1/2）か prometheus（メトリクスを表示、終了コード 0）",
    }
)
def status(c, env=None, max_age="26h", format="text"):
    """監視用に 1 行表示: 0=新しい検証済みバックアップあり、1=古い、2=ない。METRICS_FILE も更新する。

    3=最新のバックアップが疑わしい（行数の急減・別 DB）、4=作業ログに改ざんの疑い。
    """
    settings, console = settings_for(ROOT, env)
    if format not in ("text", "prometheus"):
        raise Exit(f"エラー: --format={format} は使えません → text か prometheus", code=2)
    if settings.metrics_file is not None:
        metrics_module.write(settings, console)  # hourly from cron: the textfile stays current
    if format == "prometheus":
        sys.stdout.write(guarded(lambda: metrics_module.text(settings), console))
        return
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
    restore_recover,
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
    from pgrunbook.core.errors import RunbookError

    if not value:
        raise RunbookError("ファイルが指定されていません", "--file=<パス>（keygen は --out=<パス>）", 2)
    return Path(value).expanduser()


for _offsite_task in (offsite_push, offsite_list, offsite_pull, offsite_prune, encrypt, decrypt,
                      offsite_keygen):
    namespace.add_task(_offsite_task)


# --- monitoring: dead-man's-switch pings (issue 13) ---------------------------


@task(
    help={
        "env": ENV_HELP,
        "start": "ジョブの開始を知らせる（<PING_URL>/start）",
        "exit_code": "ジョブの終了コード（crontab では $?）。0 なら成功、それ以外は失敗（/fail）を送り、"
                     "この値で終了する",
        "since": "ジョブの開始時刻（UNIX 秒）。失敗時、これ以後の作業ログから 1 行のエラーを探す",
        "message": "失敗時に送る文（既定: 作業ログの 1 行のエラー）",
    }
)
def ping(c, env=None, start=False, exit_code=None, since=None, message=None):
    """死活監視（healthchecks.io / Uptime Kuma）に開始・成功・失敗を送る。PING_URL が空なら何もしない。"""
    settings, console = settings_for(ROOT, env)
    code = guarded(
        lambda: ping_module.run(settings, console, start=start, exit_code=exit_code, since=since,
                                message=message),
        console,
    )
    if code:
        raise Exit(code=code)


namespace.add_task(ping)


# --- guards against silent disasters (issue 12) --------------------------------------

pinning_module = LazyModule("backup.pin")
worklog_module = LazyModule("core.worklog")


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
    path = guarded(lambda: drift_module.accept_drift(settings, file, reason, console), console)
    console.result(str(path))


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
    path, _ = guarded(lambda: pinning_module.pin(settings, file, keep, label, console), console)
    console.result(str(path))


@task(help={"env": ENV_HELP, "file": "固定を外すバックアップ"})
def unpin(c, env=None, file=None):
    """バックアップの固定を外す（次の prune から通常の保持期間の規則に従う）。"""
    settings, console = settings_for(ROOT, env)
    path = guarded(lambda: pinning_module.unpin(settings, file, console), console)
    console.result(str(path))


@task(name="worklog-verify", help={"env": ENV_HELP})
def worklog_verify(c, env=None):
    """作業ログのハッシュの鎖を確かめ、書き換え・削除・差し込みがあれば最初の行番号を示す（終了コード 1）。"""
    settings, console = settings_for(ROOT, env)
    report = worklog_module.verify_chain(settings.worklog_path)
    line = f"{settings.worklog_path}: {report.describe()}"
    if not report.intact:
        raise Exit(f"エラー: {line} → git などに控えた写しやオフサイトの記録と比べ、"
                   "いつ誰が書き換えたかを調べる（runbooks/guards.md）", code=1)
    console.result(line)


for _guard_task in (accept_drift, pin, unpin, worklog_verify):
    namespace.add_task(_guard_task)


# --- point-in-time recovery with pgBackRest (issue 15) -----------------------

pitr_module = LazyModule("pitr.pgbackrest")
pitr_metrics_module = LazyModule("monitoring.pitr_metrics")


@task(
    name="pitr-setup",
    help={"env": ENV_HELP, "dry_run": "何もせず、同じことを手で行うコマンドを表示する"},
)
def pitr_setup(c, env=None, dry_run=False):
    """pgBackRest のスタンザを作り（stanza-create）、WAL がリポジトリに届くことを確かめる（check）。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(lambda: pitr_module.pitr_setup(settings, dry_run, console), console)
    if isinstance(result, list):
        print_lines(result)


@task(
    name="pitr-backup",
    help={
        "env": ENV_HELP,
        "type": "full（フル）か diff（前回のフルからの差分）",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
    },
)
def pitr_backup(c, env=None, type="full", dry_run=False):  # noqa: A002 - pgBackRest's own word
    """pgBackRest のベースバックアップ（--type=full|diff）。古いものはリポジトリの保持設定で消える。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(lambda: pitr_module.pitr_backup(settings, type, dry_run, console), console)
    if isinstance(result, list):
        print_lines(result)
    else:
        console.result(result)


@task(
    name="pitr-status",
    help={
        "env": ENV_HELP,
        "max_age": "WAL がアーカイブ待ちのままでよい時間（例: 15m。既定 15m）",
        "backup_max_age": "最新のベースバックアップの許容経過時間（既定 8d）",
        "format": "text（既定: 1 行と終了コード 0/1/2）か prometheus（メトリクスを表示、終了コード 0）",
    },
)
def pitr_status(c, env=None, max_age="15m", backup_max_age="8d", format="text"):  # noqa: A002
    """監視用に 1 行表示（pg_stat_archiver と pgbackrest info）: 0=正常、1=警告（遅れ）、2=異常。
    見た結果はメトリクス（METRICS_FILE）にも書く。"""
    settings, console = settings_for(ROOT, env)
    if format not in ("text", "prometheus"):
        raise Exit(f"エラー: --format={format} は使えません → text か prometheus", code=2)
    limits = guarded(lambda: (inventory.parse_duration(max_age), inventory.parse_duration(backup_max_age)),
                     console)  # a wrong duration exits 2, as in status
    result = pitr_module.pitr_status(settings, *limits, console)
    pitr_metrics_module.record_status(settings, result, console)
    if format == "prometheus":
        sys.stdout.write(guarded(lambda: metrics_module.text(settings), console))
        return
    console.result(result.line)
    if result.exit_code:
        raise Exit(code=result.exit_code)


@task(
    name="pitr-restore-scratch",
    help={
        "env": ENV_HELP,
        "target_time": "戻す時刻（必須）。例: '2026-01-28 10:15:00'（この端末の時刻帯）、"
                       "'2026-01-28T01:15:00Z'",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
    },
)
def pitr_restore_scratch(c, env=None, target_time=None, dry_run=False):
    """指定時刻の状態を別のコンテナ（新しいボリューム・ネットワークなし）に戻して中身を表示する。本番には触れない。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(
        lambda: pitr_module.pitr_restore_scratch(settings, target_time, dry_run, console), console
    )
    if isinstance(result, list):
        print_lines(result)
    else:
        print_lines(result.report_lines(settings.db_name))
        console.result(result.name)


@task(
    name="pitr-drill",
    help={
        "env": ENV_HELP,
        "minutes": "何分前に戻すか（既定 5）",
        "target_time": "分の代わりに時刻で指定（pitr-restore-scratch と同じ書き方）",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
    },
)
def pitr_drill(c, env=None, minutes=5.0, target_time=None, dry_run=False):
    """訓練: N 分前の状態を別コンテナに戻し、本番と行数を比べ、かかった時間を記録して削除する。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(
        lambda: pitr_module.pitr_drill(settings, float(minutes), target_time, dry_run, console), console
    )
    if isinstance(result, list):
        print_lines(result)


@task(
    name="pitr-scratch-drop",
    help={"env": ENV_HELP, "name": "削除する検証用コンテナ（pitr-restore-scratch が表示した名前）"},
)
def pitr_scratch_drop(c, env=None, name=None):
    """pitr-restore-scratch が作った検証用コンテナとそのデータボリュームを削除する（それ以外は消さない）。"""
    settings, console = settings_for(ROOT, env)
    guarded(lambda: pitr_module.drop_scratch(settings, name, console), console)


for _pitr_task in (pitr_setup, pitr_backup, pitr_status, pitr_restore_scratch, pitr_drill,
                   pitr_scratch_drop):
    namespace.add_task(_pitr_task)


# --- know the state: check, drills, report (issue 13) ----------------------------------
check_module = LazyModule("monitoring.check")
report_module = LazyModule("monitoring.report")


@task(name="check", help={"env": ENV_HELP})
def check_task(c, env=None):
    """1. 事前確認: 接続先・コンテナ・DB・権限・バックアップ先・最新のバックアップ・cron を 1 画面で確認する。
    終了コード 0=すべて OK、1=WARN あり、2=NG あり。何も変更しない。"""
    settings, console = settings_for(ROOT, env)
    lines = guarded(lambda: check_module.run_check(settings), console)
    for line in lines:
        console.result(line.render())
    code = check_module.exit_code(lines)
    counts = {level: sum(1 for line in lines if line.level == level) for level in ("OK", "WARN", "NG")}
    console.result(f"事前確認 env={settings.env}: OK {counts['OK']} / WARN {counts['WARN']} / "
                   f"NG {counts['NG']}" + ("（NG を直すまで作業しない）" if code == 2 else ""))
    if code:
        raise Exit(code=code)


@task(
    help={
        "env": ENV_HELP,
        "output": "HTML の出力先（既定: <BACKUP_DIR>/report-<env>.html）",
    }
)
def report(c, env=None, output=None):
    """バックアップのサイズ・所要時間、復元訓練の結果・復旧時間、鮮度の履歴を 1 枚の HTML にする。"""
    settings, console = settings_for(ROOT, env)
    target = Path(output).expanduser().resolve() if output else None
    path = guarded(lambda: report_module.write_report(settings, target), console)
    console.result(str(path))


for _state_task in (check_task, report):
    namespace.add_task(_state_task)
