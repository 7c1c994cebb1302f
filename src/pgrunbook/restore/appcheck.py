"""The app's view after a restore: DATABASE_URL, the optional host check, masking SQL."""

from __future__ import annotations

import os
import subprocess
from urllib.parse import quote, urlsplit, urlunsplit

from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import file_chunks
from pgrunbook.core.settings import Settings
from pgrunbook.infra.postgres import (
    Postgres,
)


def database_url(settings: Settings, database: str, masked: bool, address: str | None = None) -> str:
    """APP_DATABASE_URL aimed at ``database``; without it, the DB user at ``address``
    (where the host reaches the container's port; default localhost:5432)."""
    base = (settings.app_database_url
            or f"postgresql://{settings.db_user}@{address or 'localhost:5432'}/{database}")
    parts = urlsplit(base)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, host = netloc.rsplit("@", 1)
        user, _, password = credentials.partition(":")
    else:
        user, password, host = settings.db_user, "", netloc
    password = password or quote(settings.db_password or "", safe="")
    netloc = f"{user}:{'***' if masked else password}@{host}" if password else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, parts.fragment))


def run_post_restore_command(settings: Settings, database: str, console: Console,
                             address: str | None = None) -> None:
    if not settings.post_restore_command:
        return
    console.step(f"確認コマンド: {settings.post_restore_command}")
    environment = dict(os.environ, DATABASE_URL=database_url(settings, database, masked=False,
                                                             address=address))
    done = subprocess.run(settings.post_restore_command, shell=True, cwd=settings.config_dir,
                          env=environment, capture_output=True, text=True, check=False)
    output = (done.stdout + done.stderr).strip()
    for line in output.splitlines()[-20:]:
        console.step(f"  {line}")
    if done.returncode != 0:
        raise RunbookError(
            f"確認コマンドが終了コード {done.returncode} で失敗しました: {settings.post_restore_command}",
            "出力を確認（スキーマ状態の不一致など）",
        )


def apply_masking(pg: Postgres, settings: Settings, database: str, console: Console) -> None:
    if settings.masking_sql is None:
        console.warn(f"MASKING_SQL が未設定のため、{database} の個人情報はそのままです")
        return
    if not settings.masking_sql.is_file():
        raise RunbookError(f"MASKING_SQL のファイル {settings.masking_sql} がありません",
                           f".env.{settings.env} の MASKING_SQL を確認")
    console.step(f"マスキング SQL を適用: {settings.masking_sql.name}")
    result = pg.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                     "-U", settings.db_user, "-d", database],
                    stdin=file_chunks(settings.masking_sql), on_stdout=lambda _d: None)
    if not result.ok:
        raise RunbookError(f"マスキング SQL が失敗しました: {result.error_text()}",
                           "SQL を直してから再実行（置き換えは行っていません）")
