"""Offsite copies and age encryption (``pgrunbook.offsite``)."""

from __future__ import annotations

from pathlib import Path

from pgrunbook.cli import guarded, print_lines, settings_for, task
from pgrunbook.core.console import Console
from tasks_by_area.common import ENV_HELP, ROOT, lazy


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
    result = guarded(lambda: lazy.offsite_push.push_backup(settings, file, console), console)
    console.result(result.url)


@task(name="offsite-list", help={"env": ENV_HELP})
def offsite_list(c, env=None):
    """オフサイトにあるその環境のバックアップを古い順に表示する（日時・サイズ・sha256）。"""
    settings, console = settings_for(ROOT, env)
    location, backups = guarded(lambda: lazy.offsite_remote.list_remote(settings), console)
    print_lines([lazy.offsite_remote.describe(b) for b in backups])
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
    path = guarded(lambda: lazy.offsite_pull.pull_backup(settings, key, name, console), console)
    console.result(str(path))


@task(
    name="offsite-prune",
    help={"env": ENV_HELP, "dry_run": "削除せず、削除予定のものを表示する"},
)
def offsite_prune(c, env=None, dry_run=False):
    """OFFSITE_RETENTION_DAYS より古いオフサイトコピーを削除する（最新の 1 つは常に残す）。"""
    settings, console = settings_for(ROOT, env)
    doomed = guarded(lambda: lazy.offsite_prune.prune_remote(settings, dry_run, console), console)
    print_lines([lazy.offsite_remote.describe(b) for b in doomed])


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
        lambda: lazy.offsite_encryption.encrypt_file(
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
        lambda: lazy.offsite_encryption.decrypt_file(
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
        lambda: lazy.offsite_encryption.generate_identity(_required_path(out)), console
    )
    console.summary(f"秘密鍵を {out} に書きました。公開鍵を OFFSITE_AGE_RECIPIENTS に設定してください")
    console.result(public)


@task(
    name="key-drill",
    help={
        "env": ENV_HELP,
        "identity": "保管している age の秘密鍵ファイル（必須。鍵を預けた場所から持ってきたもの）",
    },
)
def key_drill(c, env=None, identity=None):
    """鍵の訓練: 保管している秘密鍵だけで最新のオフサイトコピーを取得・復号し、sha256 と目次を確かめる。

    秘密鍵の公開鍵が OFFSITE_AGE_RECIPIENTS のどれにも対応しなければ、何もダウンロードせずに断る。
    平文は BACKUP_DIR 内の一時フォルダ（0700）にだけ置き、終わったら消す。"""
    settings, console = settings_for(ROOT, env)
    done = guarded(lambda: lazy.offsite_keydrill.key_drill(settings, identity, console), console)
    console.result(done["remote"])


def _required_path(value):
    from pgrunbook.core.errors import RunbookError

    if not value:
        raise RunbookError("ファイルが指定されていません", "--file=<パス>（keygen は --out=<パス>）", 2)
    return Path(value).expanduser()


TASKS = (offsite_push, offsite_list, offsite_pull, offsite_prune, encrypt, decrypt, offsite_keygen, key_drill)
