"""``pitr-restore-scratch`` and ``pitr-scratch-drop``: a restore to a time into a *new*
container from the live container's image with its own data volume, the live
container's other mounts (the repository) read-only and no network; the live
container is never touched beyond one tiny commit and a WAL switch. The scratch
container stays for inspection until ``pitr-scratch-drop``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from docker.errors import NotFound
from docker.types import Mount

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.infra.container import Container, engine
from pgrunbook.infra.postgres import (
    TABLE_ROW_COUNTS,
    Postgres,
    TableCount,
)
from pgrunbook.pitr.pgbackrest import (
    COPIED_OPTION_DROPPED,
    DEFAULT_DATA_DIRECTORY,
    RECOVERY_LIMIT_SECONDS,
    SCRATCH_LABEL,
    SOCKET_DIRECTORIES,
    SOURCE_LABEL,
    Stanza,
    live_server,
    repository_backups,
    require_stanza,
    restore_commands,
    run_pgbackrest,
    server_time,
    work_entry,
)

# --- restoring into a separate container ----------------------------------------------------


def parse_target_time(text: str | None) -> datetime:
    """'2026-01-28 10:15:00' (host's local time), or with an offset / Z; always aware."""
    raw = (text or "").strip()
    if not raw:
        raise RunbookError("--target-time が指定されていません",
                           "例: --target-time='2026-01-28 10:15:00'（この端末の時刻帯）や "
                           "'2026-01-28T01:15:00Z'", exit_code=2)
    normalized = raw.replace("T", " ").replace("Z", "+00:00")
    normalized = re.sub(r"([+-]\d\d)$", r"\1:00", normalized)
    try:
        when = datetime.fromisoformat(normalized)
    except ValueError:
        raise RunbookError(f"--target-time={raw!r} を時刻として読めません",
                           "YYYY-MM-DD HH:MM[:SS] と、必要なら +09:00 や Z", exit_code=2) from None
    if when.tzinfo is None:
        when = when.astimezone()  # the operator's clock
    return when


def target_literal(when: datetime) -> str:
    """The target as PostgreSQL and pgBackRest read it: UTC, microseconds."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def copied_command(command: list[str] | None) -> list[str]:
    """The live container's command without archiving/recovery options, archiving off."""
    argv = list(command or ["postgres"])
    kept: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "-c" and index + 1 < len(argv):
            if not COPIED_OPTION_DROPPED.match(argv[index + 1]):
                kept += [word, argv[index + 1]]
            index += 2
            continue
        if word.startswith("--") and "=" in word and COPIED_OPTION_DROPPED.match(word[2:].replace("-", "_")):
            index += 1
            continue
        kept.append(word)
        index += 1
    if not kept:
        kept = ["postgres"]
    return kept + ["-c", "archive_mode=off"]


# The copy listens on no TCP address (the kit reaches it through docker exec):
# with PITR_SCRATCH_NETWORK=host it would otherwise take the host's port (or fail
# to start when the live DB has it) and serve the restored data to the network.
NO_TCP = ["-c", "listen_addresses="]


def scratch_command(command: list[str] | None) -> list[str]:
    """The scratch container's command: ``copied_command`` and no TCP listener."""
    return copied_command(command) + NO_TCP


def _env_value(env: list[str], key: str) -> str | None:
    for item in env:
        name, _, value = item.partition("=")
        if name == key:
            return value
    return None


@dataclass
class Scratch:
    """A restored copy in its own container (and data volume)."""

    name: str
    volume: str
    target: datetime
    backup_set: str | None = None
    stop_line: str | None = None
    last_transaction: str | None = None
    restore_seconds: float = 0.0
    recovery_seconds: float = 0.0
    counts: list[TableCount] = field(default_factory=list)
    database_found: bool = True
    databases: list[str] = field(default_factory=list)

    def report_lines(self, database: str) -> list[str]:
        lines = [
            f"検証用コンテナ: {self.name}（データ: ボリューム {self.volume}）",
            f"対象時刻: {target_literal(self.target)}　ベースバックアップ: {self.backup_set or '?'}",
            f"所要時間: リストア {self.restore_seconds:.1f} 秒 + リカバリ {self.recovery_seconds:.1f} 秒",
        ]
        if self.stop_line:
            lines.append(f"リカバリの停止: {self.stop_line}")
        if self.last_transaction:
            lines.append(f"最後に反映したトランザクション: {self.last_transaction}")
        if self.databases:
            lines.append(f"データベース: {', '.join(self.databases)}")
        if not self.database_found:
            lines.append(f"DB {database} はこの時点にはありません")
        else:
            lines.append(f"DB {database}: テーブル {len(self.counts)} 個")
            lines += [f"  {count.schema}.{count.name}\t{count.rows} 行" for count in self.counts]
        return lines


class ScratchBuilder:
    """Makes the scratch container; on any failure removes everything it made."""

    def __init__(self, settings: Settings, console: Console, task: str) -> None:
        self.settings = settings
        self.console = console
        self.task = task
        self.client = engine()
        self.made_containers: list[Any] = []
        self.volume: str | None = None

    # -- the live container's facts
    def live_model(self):

        try:
            return self.client.containers.get(self.settings.db_container)
        except NotFound:
            Container.find(self.settings.db_container, self.client)  # its one-line error
            raise

    def free_name(self, when: datetime) -> str:
        base = f"{self.settings.db_container}-pitr-{when.strftime('%Y%m%d-%H%M%S')}"
        taken = {c.name for c in self.client.containers.list(all=True)}
        taken |= {v.name for v in self.client.volumes.list()}
        name, number = base, 2
        while name in taken or f"{name}-data" in taken:
            name, number = f"{base}-{number}", number + 1
        return name

    def mounts(self, live, data_directory: str) -> tuple[list[Any], str]:
        """The live mounts read-only (the repository, pgbackrest.conf, a postgresql.conf),
        except the data directory's (a new volume there) and socket directories."""

        data_target = data_directory
        copied = []
        for mount in live.attrs.get("Mounts") or []:
            destination = mount.get("Destination", "")
            holds_data = data_directory == destination or data_directory.startswith(
                destination.rstrip("/") + "/")
            if holds_data:
                data_target = destination
                continue
            if destination.rstrip("/") in SOCKET_DIRECTORIES:
                continue
            if mount.get("Type") == "volume":
                copied.append(Mount(destination, mount["Name"], type="volume", read_only=True))
            elif mount.get("Type") == "bind":
                copied.append(Mount(destination, mount["Source"], type="bind", read_only=True))
        repo = self.settings.pitr_repo_path
        has_repo = any(m["Target"] == repo or repo.startswith(m["Target"].rstrip("/") + "/") for m in copied)
        if not has_repo and self.settings.pitr_scratch_network == "none":
            raise RunbookError(
                f"コンテナ {self.settings.db_container} の {repo} にリポジトリのボリュームがありません",
                "リポジトリはボリュームに置く（examples/pitr/compose.yaml）。S3 のリポジトリなら "
                "PITR_SCRATCH_NETWORK にストレージへ届くネットワークを指定",
            )
        assert self.volume is not None
        return [Mount(data_target, self.volume, type="volume"), *copied], data_target

    def create(self, live, name: str, mounts: list[Any], command: list[str] | None,
               entrypoint: list[str] | None, data_directory: str):
        env = live.attrs.get("Config", {}).get("Env") or []
        environment = [item for item in env if item.startswith("PGBACKREST_")]
        pgdata = _env_value(env, "PGDATA")
        if pgdata:
            environment.append(f"PGDATA={pgdata}")
        labels = {SCRATCH_LABEL: self.settings.env, SOURCE_LABEL: self.settings.db_container,
                  "pgrunbook.data-directory": data_directory}
        model = self.client.containers.create(
            live.attrs["Image"], command=command, entrypoint=entrypoint, name=name,
            environment=environment, mounts=mounts, labels=labels,
            network_mode=self.settings.pitr_scratch_network,
        )
        self.made_containers.append(model)
        model.start()
        model.reload()
        return model

    def remove_all(self) -> None:
        for model in reversed(self.made_containers):
            with contextlib.suppress(Exception):
                model.remove(force=True, v=True)
        self.made_containers.clear()
        if self.volume:
            with contextlib.suppress(Exception):
                self.client.volumes.get(self.volume).remove(force=True)
            self.volume = None

    def remove_container(self, model) -> None:
        model.remove(force=True, v=True)
        self.made_containers.remove(model)


def _flush_archive(settings: Settings, stanza: str, console: Console, strict: bool) -> datetime | None:
    """A commit after the target (recovery stops at the first one past it), then
    ``pgbackrest check``: the WAL switches and reaches the repository. Returns the
    server's clock."""
    try:
        container, pg = live_server(settings)
        now = server_time(pg.query("SELECT txid_current(), clock_timestamp()", "postgres")[0][1])
        run_pgbackrest(Stanza(container, settings, stanza, console), ["check"], "restore")
        return now
    except RunbookError as error:
        if strict:
            raise
        console.warn(f"最新の WAL をアーカイブできませんでした（{error.message}）。"
                     "リポジトリにある WAL の範囲で戻します")
        return None


# FATALs of the kit's own connection attempts while the copy recovers: never the
# reason it stopped (on a loaded machine one can come after the startup process's)
CONNECTION_REFUSALS = ("the database system is starting up", "the database system is in recovery mode",
                       "the database system is shutting down", "the database system is not yet accepting",
                       "the database system is not accepting connections")


def recovery_failure(logs: str, status: str, env: str) -> RunbookError:
    """Why the copy's server stopped, from its log: the last FATAL or PANIC that is not
    a refused connection of the kit's own."""
    fatal = [line for line in logs.splitlines() if ("FATAL:" in line or "PANIC:" in line)
             and not any(refusal in line for refusal in CONNECTION_REFUSALS)]
    detail = fatal[-1].split("FATAL:", 1)[-1].strip() if fatal else f"状態 {status}"
    hint = "docker logs で確認"
    if "recovery target was reached" in detail or "before configured recovery target" in detail:
        hint = ("リポジトリの WAL が対象時刻まで届いていません: 対象時刻を早めるか、"
                f"invoke pitr-status --env={env} でアーカイブを確認")
    return RunbookError(f"検証用コンテナで PostgreSQL のリカバリが失敗しました: {detail}", hint)


def _wait_for_recovery(builder: ScratchBuilder, model, settings: Settings, console: Console) -> Postgres:
    """Until the copy has reached the target and is promoted; the server's FATAL if it dies."""
    scratch = Postgres(Container(builder.client, model), settings)
    deadline = time.monotonic() + RECOVERY_LIMIT_SECONDS
    while time.monotonic() < deadline:
        model.reload()
        if model.status not in ("running", "created"):
            raise recovery_failure(model.logs(tail=200).decode("utf-8", "replace"), model.status,
                                   settings.env)
        try:
            rows = scratch.query("SELECT pg_is_in_recovery()", "postgres")
        except RunbookError:
            rows = []
        if rows and rows[0][0] == "f":
            return scratch
        time.sleep(0.3)
    raise RunbookError("リカバリが終わりません", f"docker logs {model.name} で確認")


def _recovery_lines(logs: str) -> tuple[str | None, str | None]:
    stop = re.findall(r"LOG:\s+(recovery stopping [^\n]+)", logs)
    last = re.findall(r"last completed transaction was at log time ([^\n]+)", logs)
    return (stop[-1].strip() if stop else None), (last[-1].strip() if last else None)


def restore_scratch(settings: Settings, target: datetime, console: Console, task: str,
                    strict_flush: bool = False, entry: worklog.Entry | None = None) -> Scratch:
    """Restore to ``target`` into a new container; the live one is never written over.

    The caller owns the scratch afterwards (``drop_scratch``); on failure nothing is left."""
    stanza = require_stanza(settings)
    builder = ScratchBuilder(settings, console, task)
    live = builder.live_model()
    running = live.status == "running"
    data_directory = _env_value(live.attrs.get("Config", {}).get("Env") or [], "PGDATA") \
        or DEFAULT_DATA_DIRECTORY
    server_now = None
    if running:
        pg = Postgres(Container(builder.client, live), settings)
        facts = pg.facts(settings.db_name)
        data_directory = facts.data_directory or data_directory
        server_now = _flush_archive(settings, stanza, console, strict_flush)
    else:
        console.warn(f"コンテナ {settings.db_container} は停止中です: リポジトリにある WAL の範囲で戻します")
    now = server_now or datetime.now(timezone.utc)
    if target > now:
        raise RunbookError(f"対象時刻 {target_literal(target)} は未来です"
                           f"（サーバーの現在 {target_literal(now)}）", "過去の時刻を指定", exit_code=2)
    name = builder.free_name(datetime.now())
    scratch = Scratch(name, f"{name}-data", target)
    if entry is not None:
        entry.details.update(target_time=target_literal(target), scratch=name)
    try:
        builder.volume = scratch.volume
        builder.client.volumes.create(scratch.volume, labels={SCRATCH_LABEL: settings.env,
                                                              SOURCE_LABEL: settings.db_container})
        mounts, _ = builder.mounts(live, data_directory)
        console.step(f"検証用コンテナ {name} にリストア（ネットワーク {settings.pitr_scratch_network}、"
                     "リポジトリは読み取り専用）")
        helper = builder.create(live, f"{name}-restore", mounts, ["infinity"], ["sleep"], data_directory)
        helper_container = Container(builder.client, helper)
        for argv in (["mkdir", "-p", data_directory], ["chown", "postgres:postgres", data_directory],
                     ["chmod", "700", data_directory]):
            done = helper_container.run(argv)
            if not done.ok:
                raise RunbookError(f"検証用のデータディレクトリを用意できません: {done.error_text()}")
        repository = Stanza(helper_container, settings, stanza, console)
        sets = repository_backups(repository, "restore")
        usable = [item for item in sets if item.stopped < target]
        if not sets:
            raise RunbookError(f"スタンザ {stanza} にベースバックアップがありません",
                               f"invoke pitr-backup --env={settings.env} --type=full")
        if not usable:
            raise RunbookError(
                f"対象時刻 {target_literal(target)} はいちばん古いベースバックアップ {sets[0].label}"
                f"（終了 {target_literal(sets[0].stopped)}）より前です",
                "それより後の時刻を指定（それより前へは pg_dump のバックアップから: invoke restore-scratch）",
                exit_code=2,
            )
        started = time.monotonic()
        output = run_pgbackrest(repository, [
            f"--pg1-path={data_directory}", "--type=time", f"--target={target_literal(target)}",
            "--target-action=promote", "--archive-mode=off", "restore",
        ], "restore")
        scratch.backup_set = output.value(r"restore backup set ([^\s,]+)")
        scratch.restore_seconds = time.monotonic() - started
        builder.remove_container(helper)
        console.step("PostgreSQL を起動して対象時刻まで WAL を適用（archive_mode=off）")
        started = time.monotonic()
        command = scratch_command(live.attrs.get("Config", {}).get("Cmd"))
        model = builder.create(live, name, mounts, command, None, data_directory)
        copy = _wait_for_recovery(builder, model, settings, console)
        scratch.recovery_seconds = time.monotonic() - started
        scratch.stop_line, scratch.last_transaction = _recovery_lines(
            model.logs().decode("utf-8", "replace"))
        scratch.databases = copy.databases()
        scratch.database_found = settings.db_name in scratch.databases
        if scratch.database_found:
            scratch.counts = [TableCount(row[0], row[1], int(row[2]))
                              for row in copy.query(TABLE_ROW_COUNTS, settings.db_name)]
    except BaseException:
        builder.remove_all()
        raise
    if entry is not None:
        entry.details.update(backup_set=scratch.backup_set,
                             restore_seconds=round(scratch.restore_seconds, 1),
                             recovery_seconds=round(scratch.recovery_seconds, 1))
    return scratch


def pitr_restore_scratch(settings: Settings, target_text: str | None, dry_run: bool,
                         console: Console) -> list[str] | Scratch:
    target = parse_target_time(target_text)
    require_stanza(settings)
    if dry_run:
        return restore_commands(settings, target_literal(target),
                                f"{settings.db_container}-pitr-{datetime.now():%Y%m%d-%H%M%S}")
    entry = work_entry(settings, "pitr-restore-scratch")
    with worklog.recorded(settings.worklog_path, entry, console.redact), exclusive_lock(
            settings.backup_dir, settings.db_container, "pitr-restore", "pitr-restore-scratch"):
        scratch = restore_scratch(settings, target, console, "pitr-restore-scratch", entry=entry)
        entry.file = scratch.name
    console.summary(f"{target_literal(target)} の時点を {scratch.name} に戻しました。確認後に "
                    f"invoke pitr-scratch-drop --env={settings.env} --name={scratch.name} で削除")
    return scratch


def remove(client, scratch: Scratch) -> None:
    """The scratch container and its data volume, gone (best effort: a cleanup)."""
    with contextlib.suppress(Exception):
        client.containers.get(scratch.name).remove(force=True, v=True)
    with contextlib.suppress(Exception):
        client.volumes.get(scratch.volume).remove(force=True)


@contextlib.contextmanager
def at_time(settings: Settings, target_text: str | None, console: Console,
            task: str) -> Iterator[tuple[Scratch, Postgres]]:
    """A copy at a time for another task to read (``restore-partial --as-of``), with its
    server; under the PITR restore lock, removed when the block ends, however it ends."""
    target = parse_target_time(target_text)
    require_stanza(settings)
    with exclusive_lock(settings.backup_dir, settings.db_container, "pitr-restore", task):
        scratch = restore_scratch(settings, target, console, task)
        client = engine()
        try:
            yield scratch, Postgres(Container(client, client.containers.get(scratch.name)), settings)
        finally:
            remove(client, scratch)


def drop_scratch(settings: Settings, name: str | None, console: Console) -> None:
    """Remove a scratch container this kit made for this env, and its data volume."""

    if not name:
        raise RunbookError("--name が必要です", "pitr-restore-scratch が表示した検証用コンテナ名", 2)
    client = engine()
    try:
        model = client.containers.get(name)
    except NotFound:
        raise RunbookError(f"コンテナ {name!r} はありません",
                           f"docker ps -a --filter label={SCRATCH_LABEL}={settings.env} で一覧") from None
    if (model.labels or {}).get(SCRATCH_LABEL) != settings.env:
        raise Refused(f"コンテナ {name} はこの環境（{settings.env}）の PITR 検証用ではありません"
                      "（削除しません）",
                      f"docker ps -a --filter label={SCRATCH_LABEL}={settings.env} で一覧")
    entry = work_entry(settings, "pitr-scratch-drop")
    entry.file = name
    with worklog.recorded(settings.worklog_path, entry, console.redact):
        volumes = [m["Name"] for m in model.attrs.get("Mounts") or []
                   if m.get("Type") == "volume" and m.get("Name") == f"{name}-data"]
        model.remove(force=True, v=True)
        for volume in volumes:
            with contextlib.suppress(NotFound):
                client.volumes.get(volume).remove(force=True)
    console.summary(f"{name} を削除しました")


