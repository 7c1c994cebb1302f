"""Guards before a restore: versions, env rules (protected envs, personal data), confirmation."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pgrunbook.core import journal
from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings, load_settings
from pgrunbook.core.worklog import operator
from pgrunbook.infra.archive import major_version
from pgrunbook.infra.postgres import Postgres, ServerFacts, ServerLock
from pgrunbook.infra.versions import check_sql_for_psql, locale_options
from pgrunbook.restore.source import Source


def check_versions(source: Source, server_version: str) -> None:
    """Refuse an archive from a newer pg_dump than the server: its SQL is not
    guaranteed to load into an older PostgreSQL. (That the container's
    pg_restore can read the archive at all, ``pg_restore --list`` has shown.)"""
    if source.format == "custom":
        made_by = source.header.pg_dump_version if source.header else ""
    else:
        with open(source.path, "rb") as handle:
            head = handle.read(2048).decode("utf-8", "replace")
        match = re.search(r"Dumped by pg_dump version (\S+)", head)
        made_by = match.group(1) if match else ""
    if made_by and major_version(made_by) > major_version(server_version):
        raise Refused(
            f"{source.path.name} は pg_dump {made_by} で作られており、コンテナの PostgreSQL "
            f"{server_version} には戻せません（古い版のサーバーへの復元は保証されません）",
            f"PostgreSQL {major_version(made_by)} 以上のコンテナに戻す",
        )
    if source.format == "plain":  # psql comes with the server's own package
        check_sql_for_psql(source.path.name, head, server_version)


def source_is_protected(settings: Settings, source_env: str) -> bool:
    if source_env == settings.env:
        return settings.protected
    try:
        return load_settings(source_env, settings.config_dir, check_siblings=False).protected
    except RunbookError:
        return source_env == "prod"


def brings_personal_data(settings: Settings, source: Source) -> bool:
    """Data of a protected env (prod) coming into a non-protected one."""
    return bool(
        source.env and source.env != settings.env and not settings.protected
        and source_is_protected(settings, source.env)
    )


def guard_environment(
    settings: Settings, source: Source, approved_by: str | None, console: Console
) -> bool:
    """The runbook's env rules for a replace. Returns True when personal data is
    coming into a non-protected env (masking applies)."""
    if source.env != settings.env and settings.protected:
        origin = source.env or "不明"
        if not approved_by:
            raise Refused(
                f"環境 {origin} のバックアップを保護環境 {settings.env} に戻すことは原則禁止です",
                "事前に承認を取り、--approved-by=<承認者名> を付けて再実行（承認者は作業ログに残ります）",
            )
        console.warn(f"{origin} → {settings.env} のリストアを {approved_by} の承認で実行します")
    return warn_personal_data(settings, source, console)


def warn_personal_data(settings: Settings, source: Source, console: Console) -> bool:
    if not brings_personal_data(settings, source):
        return False
    console.warn(
        f"{source.env} のデータ（個人情報を含む可能性）を {settings.env} に戻します。"
        "取り扱いに注意し、不要になったら削除してください"
    )
    return True


def ask_on_stderr(prompt: str) -> str:
    """Like input(), but the prompt goes to stderr: stdout carries results only."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline()


def source_lines(source: Source) -> list[str]:
    """The confirmation banner's lines for a file to restore."""
    return [
        f"  ファイル   : {source.path}",
        f"  作成日時   : {source.created}  サイズ: {human_size(source.size)}"
        f"  元の環境: {source.env or '不明'}",
    ]


@dataclass(frozen=True)
class Banner:
    """What a confirmation banner shows besides the env, its container and database:
    ``action`` its title, ``subject`` the lines for what is put in place (``source_lines``
    for a file), ``engine`` the Docker engine (when there is one to name) and
    ``extra_lines`` below the frame."""

    action: str
    subject: list[str]
    engine: str = ""
    extra_lines: list[str] = field(default_factory=list)


def confirm(
    settings: Settings,
    shown: Banner,
    confirm_env: str | None,
    console: Console,
    ask: Callable[[str], str] | None = None,
    interactive: bool | None = None,
) -> None:
    """The runbook's 声に出して確認 / 二重確認, or --confirm=<env> without a terminal,
    after the ``shown`` banner."""
    action, subject, engine, extra_lines = shown.action, shown.subject, shown.engine, shown.extra_lines
    interactive = sys.stdin.isatty() if interactive is None else interactive
    banner = [
        "=" * 64,
        f"  {action}",
        f"  環境       : {settings.env}{'（保護環境）' if settings.protected else ''}",
        f"  コンテナ   : {settings.db_container}",
        *([f"  Docker     : {engine}"] if engine else []),
        f"  データベース: {settings.db_name}",
        *subject,
        "=" * 64,
    ]
    for line in banner + extra_lines:  # on stderr whatever the case: cron mail and logs show it
        console.summary(line)
    if confirm_env is not None:
        if confirm_env != settings.env:
            raise Refused(
                f"--confirm={confirm_env} が対象環境 {settings.env} と一致しません",
                f"対象を確かめ、--confirm={settings.env} で再実行",
            )
        return
    if not interactive:
        raise Refused(
            "端末がないため確認できません（何も変更していません）",
            f"内容を確かめたうえで --confirm={settings.env} を付けて再実行",
        )
    ask = ask or ask_on_stderr
    typed_env = ask(f"対象の環境名を入力してください（{settings.env}）: ").strip()
    if typed_env != settings.env:
        raise Refused(f"環境名が一致しません（入力: {typed_env!r}）。中止しました")
    typed_db = ask("対象のデータベース名を入力してください（上の「データベース」）: ").strip()
    if typed_db != settings.db_name:
        raise Refused(f"データベース名が一致しません（入力: {typed_db!r}）。中止しました")


def preflight_replace(settings: Settings, facts: ServerFacts, creates: bool = True) -> list[str]:
    """What would stop a replace halfway, checked before anything is restored:
    a closed live database, prepared transactions (they block the rename), a
    DB_USER that cannot rename the database, end other roles' sessions or carry
    per-role settings, and (``creates``: a replace, not a rollback) a database
    that cannot be made like the live one (its tablespace, its locale provider).
    Returns warnings (logical replication slots)."""
    live = facts.database
    assert live is not None
    name, user = settings.db_name, facts.user
    if creates:
        locale_options(facts.version, live.locale_provider, live.locale, live.icu_rules)
        if not live.tablespace_create:
            who = user.name if user else settings.db_user
            raise Refused(
                f"{name} は表領域 {live.tablespace} にあり、DB_USER {who} はそこに DB を作れません"
                "（置き換える DB も同じ表領域に作ります。何も変更していません）",
                f"superuser で: GRANT CREATE ON TABLESPACE {live.tablespace} TO {who};")
    if not live.allow_connections:
        raise RunbookError(
            f"{name} は接続を受け付けない状態です（ALLOW_CONNECTIONS false。置き換えが途中で止まった可能性）",
            f"invoke restore-recover --env={settings.env} で確認・修復")
    if live.prepared_transactions:
        raise Refused(
            f"{name} に準備済みトランザクション（PREPARE TRANSACTION）が {live.prepared_transactions} 件"
            "あり、置き換えると名前の切り替えで止まります（何も変更していません）",
            f"SELECT gid, prepared, owner FROM pg_prepared_xacts WHERE database = '{name}' で確認し、"
            "アプリ側で COMMIT PREPARED / ROLLBACK PREPARED してから再実行")
    if user and not user.superuser:
        if not (live.user_owns and user.createdb):
            raise Refused(
                f"DB_USER {user.name} は {name} の名前を変えられません（所有者 {live.owner} のメンバーで"
                "かつ CREATEDB が必要）",
                f"superuser で: ALTER ROLE {user.name} CREATEDB; GRANT {live.owner} TO {user.name};")
        if creates and not live.user_sets_owner:  # 16+: a membership granted WITH SET FALSE
            raise Refused(
                f"DB_USER {user.name} は所有者 {live.owner} のメンバーですが SET ROLE できず、"
                f"置き換える DB を {live.owner} の所有で作れません"
                "（PostgreSQL 16 以降。何も変更していません）",
                f"superuser で: GRANT {live.owner} TO {user.name} WITH SET TRUE;")
        if not user.signal_backend:
            raise Refused(
                f"DB_USER {user.name} は他のロールのセッションを終了できず、切り替えで止まります",
                f"superuser で: GRANT pg_signal_backend TO {user.name};（何も変更していません）")
        if any(role for role, _config in live.settings):
            raise Refused(
                f"{name} には ALTER ROLE … IN DATABASE の設定があり、新しい DB に移すには "
                "superuser が必要です",
                "superuser の DB_USER で実行するか、設定を控えて置き換え後に手で戻す")
    return [f"論理レプリケーションスロット {slot} は以前の DB に残り、WAL を保持し続けます。"
            "置き換え後にサブスクライバー側で作り直し、以前の DB の削除前に "
            f"SELECT pg_drop_replication_slot('{slot}') で削除" for slot in live.logical_slots]


@contextmanager
def one_writer(settings: Settings, pg: Postgres, task: str) -> Iterator[ServerLock]:
    """This env's database changed by one run at a time: the local lock (this folder,
    core/safety) and the server's advisory lock (any host, any checkout), then no
    unfinished run of this env (journal) under both. Refused before anything changes."""
    with exclusive_lock(settings.backup_dir, settings.db_container, settings.db_name, task):
        lock = ServerLock(pg, settings.db_name,
                          f"pgrunbook {task} {operator()}@{socket.gethostname()} pid {os.getpid()}")
        if not lock.acquire():
            holders = "、".join(lock.holders()) or "保持者不明"
            raise RunbookError(
                f"{settings.db_name} は別の作業が実行中です（サーバーのロック: {holders}）",
                "別のホストか別のチェックアウトからの作業です。その終了を待ってから再実行（何も変更していません）")
        try:
            if task != "restore-recover":
                journal.refuse_unfinished(settings)
            yield lock
        finally:
            lock.release()
