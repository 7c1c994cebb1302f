"""Point-in-time recovery with pgBackRest beside the kit (runbooks/pitr.md).

pgBackRest does the work (WAL archiving, base backups, restores); this module
drives it inside the DB container through the Engine API, with the kit's
guarantees: env guard, lock, work log, notifications, one-line errors and
``--dry-run`` with the hand commands.

* ``pitr-setup``: refuses unless archive_mode is on and archive_command pushes
  to this stanza (saying exactly what to set), then ``stanza-create`` and
  ``check``.
* ``pitr-backup``: ``backup --type=full|diff`` (expiry follows the
  repository's retention settings, as pgBackRest does after every backup).
* ``pitr-status``: pg_stat_archiver (last archived WAL and its age, failures,
  WAL waiting) and the newest base backup; 0 ok, 1 warning, 2 error.
* ``pitr-restore-scratch``: restores to a time into a *new* container from the
  live container's image with its own data volume, the live container's other
  mounts (the repository) read-only and no network; the live container is
  never touched beyond one tiny commit and a WAL switch. The scratch container
  stays for inspection until ``pitr-scratch-drop``.
* ``pitr-drill``: the same to "N minutes ago", then a comparison with the
  live database (see ``compare_tables``), and the scratch container removed.

pgBackRest runs as the ``postgres`` OS user (the owner of the data directory)
with ``PGUSER``/``PGPASSWORD`` in the exec's environment; its configuration
(repository, encryption, retention) is the container's own pgbackrest.conf
and ``PGBACKREST_*`` variables, the one source of truth that archive_command
uses too.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.infra.container import Container, ExecResult, engine
from pgrunbook.infra.postgres import (
    TABLE_ROW_COUNTS,
    USER_TABLES_FROM,
    Postgres,
    TableCount,
    quote_literal,
)
from pgrunbook.store import inventory

EXAMPLE_STANZA = "knot"  # the docs' example when .env.example leaves PITR_STANZA empty
BACKUP_TYPES = ("full", "diff")
SCRATCH_LABEL = "pgrunbook.pitr-scratch"  # value: the env
SOURCE_LABEL = "pgrunbook.pitr-source"  # value: the live container's name
DEFAULT_DATA_DIRECTORY = "/var/lib/postgresql/data"
# never shared with a copy: the copy's server would meet the live one's socket
SOCKET_DIRECTORIES = ("/var/run/postgresql", "/run/postgresql", "/tmp")
RECOVERY_LIMIT_SECONDS = 6 * 3600
# options of the live server that must not reach a restored copy: it would
# archive into the live stanza or recover again
COPIED_OPTION_DROPPED = re.compile(r"^(archive_mode|archive_command|archive_library|restore_command|"
                                   r"recovery_target\w*|primary_conninfo|port)=")
PGBACKREST_ERROR = re.compile(r"ERROR: \[(\d+)\]: (.+)")


def pgbackrest_error(text: str) -> str | None:
    """The last ``ERROR: [NNN]: ...`` of pgBackRest's output as one line, with the
    first continuation line when the message ends in a colon (the reason)."""
    lines = text.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        match = PGBACKREST_ERROR.search(lines[index])
        if not match:
            continue
        message = match.group(2).strip()
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if message.endswith(":") and following.strip().startswith("***"):
            message = message.rstrip(":")  # an S3 request's dump (path, headers) follows
        elif message.endswith(":") and following.startswith((" ", "\t")):
            message = f"{message} {following.strip()}"
        return f"[{match.group(1)}] {message}"[:300]
    return None


# --- settings and hand commands ------------------------------------------------


def require_stanza(settings: Settings) -> str:
    if not settings.pitr_stanza:
        raise RunbookError(
            f"PITR_STANZA が設定されていません（{settings.files[-1].name}）",
            "pgbackrest.conf のスタンザ名（例: knot）を PITR_STANZA に書く（runbooks/pitr.md）",
            exit_code=2,
        )
    return settings.pitr_stanza


def expected_archive_command(stanza: str) -> str:
    return f"pgbackrest --stanza={stanza} archive-push %p"


def _stanza_or_example(settings: Settings) -> str:
    return settings.pitr_stanza or EXAMPLE_STANZA


def _pgbackrest_line(settings: Settings, *args: str) -> str:
    password = " -e PGPASSWORD" if settings.db_password else ""
    stanza = _stanza_or_example(settings)
    return (f"docker exec -u postgres -e PGUSER={shlex.quote(settings.db_user)}{password} "
            f"{shlex.quote(settings.db_container)} pgbackrest --stanza={stanza} {shlex.join(args)}")


def _psql_line(settings: Settings, sql: str, database: str = "postgres") -> str:
    password = " -e PGPASSWORD" if settings.db_password else ""
    quoted = f'"{sql}"' if not any(ch in sql for ch in '"$`\\!') else shlex.quote(sql)
    return (f"docker exec{password} {shlex.quote(settings.db_container)} psql -X "
            f"-U {shlex.quote(settings.db_user)} -d {shlex.quote(database)} -Atc {quoted}")


ARCHIVE_SETTINGS_SQL = ("SELECT name, setting FROM pg_settings WHERE name IN "
                        "('archive_mode', 'archive_command', 'wal_level', 'track_commit_timestamp')")
ARCHIVER_SQL = ("SELECT last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
                "last_failed_time FROM pg_stat_archiver")


def setup_commands(settings: Settings) -> list[str]:
    return [
        f"{_psql_line(settings, ARCHIVE_SETTINGS_SQL)}   "
        f"# archive_mode=on, archive_command={expected_archive_command(_stanza_or_example(settings))}",
        _pgbackrest_line(settings, "stanza-create"),
        _pgbackrest_line(settings, "check"),
    ]


def backup_commands(settings: Settings, kind: str) -> list[str]:
    return [_pgbackrest_line(settings, f"--type={kind}", "backup"), _pgbackrest_line(settings, "info")]


def status_commands(settings: Settings) -> list[str]:
    return [_psql_line(settings, ARCHIVER_SQL), _pgbackrest_line(settings, "info")]


def restore_commands(settings: Settings, target: str, scratch: str) -> list[str]:
    """By hand: a new container from the live one's image, its own data volume,
    the repository read-only, no network; never the live data directory."""
    live = shlex.quote(settings.db_container)
    stanza = _stanza_or_example(settings)
    data = DEFAULT_DATA_DIRECTORY
    repo = settings.pitr_repo_path
    volume = f"{scratch}-data"
    mounts = f"-v {volume}:{data} -v \"$REPO\":{repo}:ro"
    network = settings.pitr_scratch_network
    secrets = "-e PGBACKREST_REPO1_CIPHER_PASS"
    if network != "none":  # a repository on S3: its keys too
        secrets += " -e PGBACKREST_REPO1_S3_KEY -e PGBACKREST_REPO1_S3_KEY_SECRET"
    run = f"docker run --rm --network {network} {mounts} {secrets}"
    restore = shlex.join([
        "pgbackrest", f"--stanza={stanza}", f"--pg1-path={data}", "--type=time",
        f"--target={target}", "--target-action=promote", "--archive-mode=off", "restore",
    ])
    return [
        f"IMAGE=$(docker inspect -f '{{{{.Image}}}}' {live})",
        f"REPO=$(docker inspect -f '{{{{range .Mounts}}}}{{{{if eq .Destination \"{repo}\"}}}}"
        f"{{{{.Name}}}}{{{{end}}}}{{{{end}}}}' {live})",
        "# 対象時刻より後のコミットを 1 つ作り、WAL を切り替えてアーカイブさせる",
        _psql_line(settings, "SELECT txid_current()"),
        _pgbackrest_line(settings, "check"),
        f"docker volume create {volume}",
        f"{run} --entrypoint sh \"$IMAGE\" -c 'chown postgres:postgres {data} && chmod 700 {data}'",
        f"{run} --user postgres --entrypoint pgbackrest \"$IMAGE\" {restore[len('pgbackrest '):]}",
        f"docker run -d --name {scratch} --network {network} {mounts} {secrets} "
        "\"$IMAGE\" postgres -c archive_mode=off -c listen_addresses=''",
        f"docker logs -f {scratch}   # 'database system is ready to accept connections' まで待つ",
        f"docker exec {scratch} psql -U {shlex.quote(settings.db_user)} -d {shlex.quote(settings.db_name)} "
        "-c '\\dt+'",
    ]


def drop_commands(scratch: str) -> list[str]:
    return [f"docker rm -f {scratch}", f"docker volume rm {scratch}-data"]


# --- pgBackRest inside the container ---------------------------------------------


@dataclass(frozen=True)
class Output:
    """What a pgBackRest run printed (its console log), and how it ended."""

    exit_code: int
    text: str

    def error_line(self) -> str:
        found = pgbackrest_error(self.text)
        if found:
            return found
        lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        return lines[-1] if lines else f"終了コード {self.exit_code}"

    def json_line(self) -> str:
        """``info --output=json`` prints its JSON on one line."""
        return next((line for line in self.text.splitlines() if line.startswith("[")), "[]")

    def value(self, pattern: str) -> str | None:
        match = re.search(pattern, self.text)
        return match.group(1) if match else None


S3_REFUSED = re.compile(
    r"HTTP request failed with 40[13]\b|InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied")


def _hint_for(command: str, line: str, settings: Settings) -> str:
    env = settings.env
    # a repository on S3 first: its errors also say "unable to load info file"
    if S3_REFUSED.search(line):
        return ("S3 のキー（PGBACKREST_REPO1_S3_KEY / PGBACKREST_REPO1_S3_KEY_SECRET）、"
                "バケットの権限と repo1-s3-region を確認")
    if "TLS error" in line or "in certificate" in line or "certificate verify" in line:
        return ("ストレージの証明書を確認（repo1-storage-ca-file、証明書の名前とエンドポイント）。"
                "本番で TLS の検証は切らない")
    if "unable to connect" in line or "unable to get address" in line:
        return ("ストレージに届きません: repo1-s3-endpoint、repo1-storage-port と"
                "DB コンテナのネットワークを確認")
    if "unable to load info file" in line or "missing stanza" in line or (
            "stanza" in line and "not" in line):
        return f"スタンザがまだありません → invoke pitr-setup --env={env}"
    if "lock" in line:
        return "別の pgBackRest（バックアップ・check など）が実行中 → 終わってから再実行"
    if "archive" in line and ("timeout" in line or "not found" in line or "was not archived" in line):
        return f"WAL がリポジトリに届いていません → invoke pitr-status --env={env} で失敗の理由を確認"
    if "cipher" in line or "decrypt" in line:
        return "リポジトリの暗号化パスフレーズ（PGBACKREST_REPO1_CIPHER_PASS）を確認"
    return f"上に表示した pgBackRest の出力を確認（手で: invoke pitr-{command} --env={env} --dry-run）"


def run_pgbackrest(container: Container, settings: Settings, stanza: str, args: list[str],
                   console: Console, what: str, quiet: bool = False) -> Output:
    """pgbackrest as the postgres OS user; its log lines shown as steps, its errors one line."""
    buffer = bytearray()
    pending = bytearray()

    def on_stdout(data: bytes) -> None:
        buffer.extend(data)
        pending.extend(data)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            text = line.decode("utf-8", "replace").strip()
            if text and not quiet:
                console.step(text)

    environment = {"PGUSER": settings.db_user, **settings.password_environment()}
    try:
        result: ExecResult = container.exec(
            ["pgbackrest", f"--stanza={stanza}", *args], environment=environment,
            on_stdout=on_stdout, user="postgres",
        )
    except RunbookError as error:
        if "pgbackrest を実行できません" in error.message:
            raise _no_pgbackrest(container) from None
        raise
    output = Output(result.exit_code, buffer.decode("utf-8", "replace") + "\n" + result.stderr)
    if not result.ok:
        line = output.error_line()
        raise RunbookError(f"pgBackRest の {what} が失敗しました: {line}", _hint_for(what, line, settings))
    return output


def _no_pgbackrest(container: Container) -> RunbookError:
    return RunbookError(
        f"コンテナ {container.name} に pgbackrest がありません",
        "examples/pitr/Dockerfile のイメージ（pgBackRest 入り）で DB コンテナを作り直す（runbooks/pitr.md）",
    )


def pgbackrest_version(container: Container) -> str:
    try:
        result = container.run(["pgbackrest", "version"])
    except RunbookError:
        raise _no_pgbackrest(container) from None
    if not result.ok:
        raise _no_pgbackrest(container)
    return result.stdout.decode("utf-8", "replace").strip()


# --- the live server's archiving ---------------------------------------------------


@dataclass(frozen=True)
class ArchiveSettings:
    archive_mode: str
    archive_command: str | None  # None: hidden from a role without pg_read_all_settings
    wal_level: str
    track_commit_timestamp: bool


def archive_settings(pg: Postgres) -> ArchiveSettings:
    values = dict((row[0], row[1]) for row in pg.query(ARCHIVE_SETTINGS_SQL, "postgres"))
    return ArchiveSettings(
        values.get("archive_mode", "off"), values.get("archive_command"),
        values.get("wal_level", "replica"), values.get("track_commit_timestamp") == "on",
    )


def check_archiving(found: ArchiveSettings, stanza: str, console: Console | None = None) -> None:
    """Refuse a server whose WAL does not reach this stanza, saying exactly what to set."""
    expected = expected_archive_command(stanza)
    options = f"-c archive_mode=on -c 'archive_command={expected}'"
    if found.wal_level == "minimal":
        raise Refused(
            "wal_level=minimal では WAL をアーカイブできません",
            f"DB コンテナを -c wal_level=replica {options} で起動し直す"
            "（examples/pitr/compose.yaml の command）",
        )
    if found.archive_mode not in ("on", "always"):
        raise Refused(
            f"archive_mode={found.archive_mode} です"
            "（WAL をアーカイブしていないので、ある時点へは戻せません）",
            f"DB コンテナを {options} で起動し直す（archive_mode は再起動が必要。"
            "examples/pitr/compose.yaml の command）",
        )
    if found.archive_command is None:
        if console:
            console.warn("archive_command を読めません（pg_read_all_settings がない）: "
                         "確認は pgbackrest check に任せます")
        return
    words = found.archive_command.split()
    if "pgbackrest" not in " ".join(words) or f"--stanza={stanza}" not in words \
            or "archive-push" not in words:
        raise Refused(
            f"archive_command={found.archive_command!r} は pgBackRest のスタンザ {stanza} に"
            " WAL を送っていません",
            f"-c 'archive_command={expected}' にして DB コンテナを起動し直す"
            "（または ALTER SYSTEM と再読み込み）",
        )


def _live(settings: Settings) -> tuple[Container, Postgres]:
    container = Container.find(settings.db_container)
    return container, Postgres(container, settings)


def _lock(settings: Settings, task: str):
    return exclusive_lock(settings.backup_dir, settings.db_container, f"pitr-{settings.pitr_stanza}", task)


def _entry(settings: Settings, task: str) -> worklog.Entry:
    return worklog.Entry(task, settings.env, settings.db_name, settings.db_container,
                         details={"stanza": settings.pitr_stanza})


def pitr_setup(settings: Settings, dry_run: bool, console: Console) -> list[str] | str:
    """stanza-create + check; returns the pgBackRest version (or the hand commands)."""
    stanza = require_stanza(settings)
    if dry_run:
        return setup_commands(settings)
    console.step(f"接続先: {settings.describe()} stanza={stanza}")
    with worklog.recorded(settings.worklog_path, _entry(settings, "pitr-setup"), console.redact) as entry, \
            _lock(settings, "pitr-setup"):
        container, pg = _live(settings)
        found = archive_settings(pg)
        check_archiving(found, stanza, console)
        version = pgbackrest_version(container)
        entry.details["pgbackrest_version"] = version
        console.step(f"{version}: stanza-create")
        run_pgbackrest(container, settings, stanza, ["stanza-create"], console, "setup")
        console.step("check（WAL を 1 つ切り替えて、リポジトリに届くことを確かめます）")
        run_pgbackrest(container, settings, stanza, ["check"], console, "setup")
        if not found.track_commit_timestamp:
            console.warn("track_commit_timestamp=off: pitr-drill は対象時刻の行数を本番側で数えられません"
                         "（-c track_commit_timestamp=on を推奨）")
    console.summary(f"PITR の準備ができました: stanza={stanza}（{version}）")
    return version


def pitr_backup(settings: Settings, kind: str, dry_run: bool, console: Console) -> list[str] | str:
    """A base backup (full or differential); returns its label."""
    if kind not in BACKUP_TYPES:
        raise RunbookError(f"--type={kind!r} は使えません", "--type=full か --type=diff", exit_code=2)
    stanza = require_stanza(settings)
    if dry_run:
        return backup_commands(settings, kind)
    entry = _entry(settings, "pitr-backup")
    entry.details["type"] = kind
    with worklog.recorded(settings.worklog_path, entry, console.redact), _lock(settings, "pitr-backup"):
        container, pg = _live(settings)
        check_archiving(archive_settings(pg), stanza, console)
        output = run_pgbackrest(container, settings, stanza, [f"--type={kind}", "backup"], console, "backup")
        label = output.value(r"new backup label = (\S+)")
        if not label:
            raise RunbookError("pgBackRest のバックアップのラベルが出力にありません",
                               f"invoke pitr-status --env={settings.env} と pgbackrest info で確認")
        entry.file = label
        size = output.value(r"backup size = ([^,\n]+)")
        entry.details["size"] = size
        if kind == "diff" and label.endswith("F"):
            console.warn("以前のフルバックアップがないため、フルバックアップになりました")
        _refresh_backup_metrics(container, settings, stanza, console)
    console.summary(f"ベースバックアップ {label} を作りました（{kind}, {size or '?'}）")
    return label


def _refresh_backup_metrics(container: Container, settings: Settings, stanza: str,
                            console: Console) -> None:
    """The repository's base backups for the metrics (before the work-log line rewrites
    METRICS_FILE); a failure here is a warning, the backup is made."""
    from pgrunbook.monitoring import pitr_metrics

    try:
        info = run_pgbackrest(container, settings, stanza, ["--output=json", "info"], console,
                              "backup", quiet=True)
    except RunbookError as error:
        console.warn(f"pgbackrest info を読めませんでした（メトリクスは次の pitr-status で更新）: "
                     f"{error.message}")
        return
    pitr_metrics.record_backups(settings, backup_sets(info.json_line(), stanza), console)


# --- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiverState:
    archive_mode: str
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    now: datetime
    waiting: int | None  # .ready files; None without pg_monitor
    oldest_waiting: datetime | None

    @property
    def failing(self) -> bool:
        """The last attempt failed: a failure newer than the last success (or none ever)."""
        return self.last_failed_time is not None and (
            self.last_archived_time is None or self.last_failed_time > self.last_archived_time)


STATUS_SQL = """
SELECT json_build_object(
  'archive_mode', current_setting('archive_mode'),
  'last_archived_wal', s.last_archived_wal, 'last_archived_time', s.last_archived_time,
  'failed_count', s.failed_count, 'last_failed_wal', s.last_failed_wal,
  'last_failed_time', s.last_failed_time, 'now', clock_timestamp(),
  'waiting', CASE WHEN pg_has_role('pg_monitor', 'USAGE') THEN (
      SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') END,
  'oldest_waiting', CASE WHEN pg_has_role('pg_monitor', 'USAGE') THEN (
      SELECT min(modification) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') END)
FROM pg_stat_archiver s
"""


def _timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    text = value.replace(" ", "T")
    if re.search(r"[+-]\d\d$", text):
        text += ":00"
    return datetime.fromisoformat(text)


def archiver_state(pg: Postgres) -> ArchiverState:
    raw = json.loads(pg.query(STATUS_SQL, "postgres")[0][0])
    return ArchiverState(
        raw["archive_mode"], raw["last_archived_wal"], _timestamp(raw["last_archived_time"]),
        int(raw["failed_count"] or 0), raw["last_failed_wal"], _timestamp(raw["last_failed_time"]),
        _timestamp(raw["now"]) or datetime.now(timezone.utc),
        None if raw["waiting"] is None else int(raw["waiting"]), _timestamp(raw["oldest_waiting"]),
    )


@dataclass(frozen=True)
class BackupSet:
    label: str
    kind: str
    started: datetime
    stopped: datetime


def backup_sets(info_json: str, stanza: str) -> list[BackupSet]:
    """The stanza's backups from ``pgbackrest info --output=json``, oldest first."""
    try:
        stanzas = json.loads(info_json)
    except ValueError:
        return []
    found = []
    for entry in stanzas:
        if entry.get("name") != stanza:
            continue
        for backup in entry.get("backup") or []:
            if backup.get("error"):
                continue
            stamps = backup.get("timestamp") or {}
            found.append(BackupSet(
                backup["label"], backup.get("type", ""),
                datetime.fromtimestamp(int(stamps["start"]), timezone.utc),
                datetime.fromtimestamp(int(stamps["stop"]), timezone.utc),
            ))
    return sorted(found, key=lambda item: item.stopped)


def describe_age(age: timedelta) -> str:
    """As inventory.describe_age, with seconds under two minutes (WAL archiving is that quick)."""
    seconds = int(age.total_seconds())
    if 0 <= seconds < 120:
        return f"{seconds}秒"
    return inventory.describe_age(age)


@dataclass(frozen=True)
class Status:
    exit_code: int  # 0 ok, 1 warning, 2 error
    line: str
    # what pitr-status saw, for the metrics (pitr_metrics); None: not read this time
    state: ArchiverState | None = None
    backups: list[BackupSet] | None = None


def status_label(env: str, stanza: str) -> str:
    return f"env={env} stanza={stanza or '-'}"


def archiving_failure(env: str, stanza: str, state: ArchiverState,
                      reason: str | None = None) -> Status | None:
    """The errors pg_stat_archiver shows on its own (pure): archiving off, failing, never done."""
    label = status_label(env, stanza)
    if state.archive_mode not in ("on", "always"):
        return Status(2, f"CRITICAL {label}: archive_mode={state.archive_mode}"
                         "（WAL をアーカイブしていません）"
                         f" → invoke pitr-setup --env={env} の案内どおりに設定")
    if state.failing:
        why = f": {reason}" if reason else ""
        since = describe_age(state.now - state.last_failed_time)
        return Status(2, f"CRITICAL {label}: WAL {state.last_failed_wal} のアーカイブが失敗しています"
                         f"（失敗 {state.failed_count} 回、最後 {since}前）"
                         f"{why} → archive_command とリポジトリ（pgbackrest.conf の repo1-*）を確認し、"
                         f"docker logs で pgBackRest の ERROR を見る")
    if state.last_archived_wal is None or state.last_archived_time is None:
        return Status(2, f"CRITICAL {label}: まだ WAL が 1 つもアーカイブされていません"
                         f" → invoke pitr-setup --env={env}")
    return None


def evaluate_status(env: str, stanza: str, state: ArchiverState, backups: list[BackupSet],
                    max_age: timedelta, backup_max_age: timedelta, reason: str | None = None) -> Status:
    """The monitoring verdict (pure): failures and no archive are errors, delays warnings."""
    failure = archiving_failure(env, stanza, state, reason)
    if failure:
        return failure
    assert state.last_archived_time is not None
    label = status_label(env, stanza)
    if not backups:
        return Status(2, f"CRITICAL {label}: ベースバックアップがありません"
                         f" → invoke pitr-backup --env={env} --type=full")
    archived_age = state.now - state.last_archived_time
    newest = backups[-1]
    backup_age = state.now - newest.stopped
    facts = (f"最後にアーカイブした WAL {state.last_archived_wal}（{describe_age(archived_age)}前）、"
             f"待ち {'?' if state.waiting is None else state.waiting}、"
             f"最新のベースバックアップ {newest.label}（{describe_age(backup_age)}前）")
    waiting_too_long = state.waiting and archived_age > max_age and (
        state.oldest_waiting is None or state.now - state.oldest_waiting > max_age)
    if waiting_too_long:
        return Status(1, f"WARNING {label}: WAL {state.waiting} 個がアーカイブ待ちのまま "
                         f"{describe_age(archived_age)}（上限 {describe_age(max_age)}）: {facts}")
    if backup_age > backup_max_age:
        return Status(1, f"WARNING {label}: 最新のベースバックアップが古すぎます（上限 "
                         f"{describe_age(backup_max_age)}）: {facts} → cron の pitr-backup を確認")
    return Status(0, f"OK {label}: {facts}")


def last_pgbackrest_error(container: Container, redact) -> str | None:
    """The newest pgBackRest ERROR line in the container's output (archive-push writes there)."""
    try:
        logs = container.model.logs(tail=400).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - only an explanation
        return None
    found = pgbackrest_error(logs)
    return redact(f"ERROR {found}") if found else None


def pitr_status(settings: Settings, max_age: timedelta, backup_max_age: timedelta,
                console: Console) -> Status:
    """Monitoring: like ``status``, one line, no work-log line; any failure is 2."""
    env, stanza = settings.env, settings.pitr_stanza
    state: ArchiverState | None = None
    try:
        require_stanza(settings)
        container, pg = _live(settings)
        state = archiver_state(pg)
        reason = None
        if state.last_failed_time is not None:
            reason = last_pgbackrest_error(container, console.redact)
        failure = archiving_failure(env, stanza, state, reason)
        if failure:
            return replace(failure, state=state)
        info = run_pgbackrest(container, settings, stanza, ["--output=json", "info"], console, "status",
                              quiet=True)
        backups = backup_sets(info.json_line(), stanza)
    except RunbookError as error:
        return Status(2, f"CRITICAL {status_label(env, stanza)}: {error.one_line().removeprefix('エラー: ')}",
                      state=state)
    verdict = evaluate_status(env, stanza, state, backups, max_age, backup_max_age, reason)
    return replace(verdict, state=state, backups=backups)


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
        from docker.errors import NotFound

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
        from docker.types import Mount

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
        container, pg = _live(settings)
        now = _timestamp(pg.query("SELECT txid_current(), clock_timestamp()", "postgres")[0][1])
        run_pgbackrest(container, settings, stanza, ["check"], console, "restore")
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
        info = run_pgbackrest(helper_container, settings, stanza, ["--output=json", "info"], console,
                              "restore", quiet=True)
        sets = backup_sets(info.json_line(), stanza)
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
        output = run_pgbackrest(helper_container, settings, stanza, [
            f"--pg1-path={data_directory}", "--type=time", f"--target={target_literal(target)}",
            "--target-action=promote", "--archive-mode=off", "restore",
        ], console, "restore")
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
    entry = _entry(settings, "pitr-restore-scratch")
    with worklog.recorded(settings.worklog_path, entry, console.redact), exclusive_lock(
            settings.backup_dir, settings.db_container, "pitr-restore", "pitr-restore-scratch"):
        scratch = restore_scratch(settings, target, console, "pitr-restore-scratch", entry=entry)
        entry.file = scratch.name
    console.summary(f"{target_literal(target)} の時点を {scratch.name} に戻しました。確認後に "
                    f"invoke pitr-scratch-drop --env={settings.env} --name={scratch.name} で削除")
    return scratch


def drop_scratch(settings: Settings, name: str | None, console: Console) -> None:
    """Remove a scratch container this kit made for this env, and its data volume."""
    from docker.errors import NotFound

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
    entry = _entry(settings, "pitr-scratch-drop")
    entry.file = name
    with worklog.recorded(settings.worklog_path, entry, console.redact):
        volumes = [m["Name"] for m in model.attrs.get("Mounts") or []
                   if m.get("Type") == "volume" and m.get("Name") == f"{name}-data"]
        model.remove(force=True, v=True)
        for volume in volumes:
            with contextlib.suppress(NotFound):
                client.volumes.get(volume).remove(force=True)
    console.summary(f"{name} を削除しました")


# --- the drill -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableCheck:
    """One table of the drill: the restored count against the live database."""

    schema: str
    name: str
    restored: int | None  # None: not in the restored copy
    live_now: int | None  # None: not in the live database any more
    live_as_of: int | None  # live rows committed at or before the target; None: unknown

    @property
    def verdict(self) -> str:
        if self.restored is not None and self.live_as_of is not None and self.restored < self.live_as_of:
            return "lost"
        if self.restored is None:
            return "only-live"
        if self.live_now is None:
            return "only-restored"
        return "ok"

    def line(self) -> str:
        def cell(value: int | None) -> str:
            return "—" if value is None else str(value)

        words = {"ok": "OK", "lost": "行の欠落", "only-live": "復元先になし（対象時刻より後に作成？）",
                 "only-restored": "本番になし（対象時刻より後に削除？）"}
        return (f"{self.schema}.{self.name}\t{cell(self.restored)}\t{cell(self.live_now)}\t"
                f"{cell(self.live_as_of)}\t{words[self.verdict]}")


def compare_tables(restored: list[TableCount],
                   live: list[tuple[str, str, int, int | None]]) -> list[TableCheck]:
    """Restored counts against the live database (pure).

    ``live``: (schema, table, rows now, rows whose current version committed at
    or before the target, or None without track_commit_timestamp). Rows
    committed before the target that still exist unchanged must all be in the
    copy, so ``restored >= live_as_of`` must hold for every table; the rest of
    any difference is what changed after the target (inserts, updates,
    deletes), which the drill reports but does not judge."""
    restored_by = {(c.schema, c.name): c.rows for c in restored}
    live_by = {(schema, name): (now, as_of) for schema, name, now, as_of in live}
    checks = []
    for key in sorted(set(restored_by) | set(live_by)):
        now, as_of = live_by.get(key, (None, None))
        checks.append(TableCheck(key[0], key[1], restored_by.get(key), now, as_of))
    return checks


def live_counts_as_of(pg: Postgres, target: datetime,
                      with_commit_times: bool) -> list[tuple[str, str, int, int | None]]:
    """Per table: rows now and, with track_commit_timestamp, rows whose version
    committed at or before the target (an unknown commit time counts as before:
    a row older than the tracking)."""
    as_of = "NULL::bigint"
    if with_commit_times:
        as_of = ("count(*) FILTER (WHERE coalesce(pg_xact_commit_timestamp(xmin) <= "
                 f"{quote_literal(target_literal(target))}::timestamptz, true))")
    # one scan per table for both counts; format(%I) quotes the names
    counted = f"""query_to_xml(format(
    'SELECT count(*) AS c, %s AS a FROM %I.%I', {quote_literal(as_of)}, n.nspname, c.relname),
    false, true, '')"""
    sql = f"""SELECT nspname, relname, (xpath('/row/c/text()', x))[1]::text::bigint,
       (xpath('/row/a/text()', x))[1]::text::bigint
FROM (SELECT n.nspname, c.relname, {counted} AS x {USER_TABLES_FROM}) AS t ORDER BY 1, 2"""
    rows = pg.query(sql)
    return [(r[0], r[1], int(r[2]), None if r[3] in ("", None) else int(r[3])) for r in rows]


@dataclass
class DrillResult:
    scratch: Scratch
    checks: list[TableCheck]
    with_commit_times: bool

    @property
    def lost(self) -> list[TableCheck]:
        return [check for check in self.checks if check.verdict == "lost"]

    def lines(self) -> list[str]:
        header = "テーブル\t復元\t本番（現在）\t本番（対象時刻までのコミット）\t判定"
        return [header, *(check.line() for check in self.checks)]


def pitr_drill(settings: Settings, minutes: float, target_text: str | None, dry_run: bool,
               console: Console) -> list[str] | DrillResult:
    """Restore to N minutes ago into a scratch container, compare with live, remove it."""
    require_stanza(settings)
    if minutes <= 0:
        raise RunbookError(f"--minutes={minutes} は 0 より大きくしてください", exit_code=2)
    if dry_run:
        when = parse_target_time(target_text) if target_text else \
            datetime.now(timezone.utc) - timedelta(minutes=minutes)
        scratch = f"{settings.db_container}-pitr-{datetime.now():%Y%m%d-%H%M%S}"
        return [*restore_commands(settings, target_literal(when), scratch),
                f"docker exec {shlex.quote(settings.db_container)} psql -U {shlex.quote(settings.db_user)} "
                f"-d {shlex.quote(settings.db_name)} -c '\\dt+'   # 本番と行数を比べる",
                *drop_commands(scratch)]
    entry = _entry(settings, "pitr-drill")
    with worklog.recorded(settings.worklog_path, entry, console.redact), \
            exclusive_lock(settings.backup_dir, settings.db_container, "pitr-restore", "pitr-drill"):
        _, pg = _live(settings)
        if target_text:
            target = parse_target_time(target_text)
        else:
            now = _timestamp(pg.query("SELECT clock_timestamp()", "postgres")[0][0])
            assert now is not None
            target = now - timedelta(seconds=minutes * 60)
        with_commit_times = archive_settings(pg).track_commit_timestamp
        started = time.monotonic()
        scratch = restore_scratch(settings, target, console, "pitr-drill", strict_flush=True, entry=entry)
        builder_client = engine()
        try:
            live = live_counts_as_of(pg, target, with_commit_times)
            result = DrillResult(scratch, compare_tables(scratch.counts, live), with_commit_times)
        finally:
            _remove_scratch(builder_client, scratch)
        entry.details.update(total_seconds=round(time.monotonic() - started, 1),
                             tables=len(result.checks),
                             lost_tables=[f"{c.schema}.{c.name}" for c in result.lost],
                             commit_times=with_commit_times)
        for line in scratch.report_lines(settings.db_name)[:5]:
            console.summary(line)
        for line in result.lines():
            console.result(line)
        if result.lost:
            names = ", ".join(f"{c.schema}.{c.name}" for c in result.lost)
            raise RunbookError(
                f"訓練: 対象時刻までにコミットされた行が復元先で足りません（{names}）",
                "WAL の欠け（pitr-status）を確認し、出力と作業ログを保存して報告")
        if not with_commit_times:
            console.warn("track_commit_timestamp=off: 対象時刻の行数は本番側で数えられないため、"
                         "現在の行数だけを並べました")
    seconds = scratch.restore_seconds + scratch.recovery_seconds
    console.summary(f"訓練 OK: {target_literal(target)} の時点を {seconds:.1f} 秒で復元し"
                    f"（テーブル {len(result.checks)} 個、行の欠落なし）、検証用コンテナは削除しました")
    return result


def _remove_scratch(client, scratch: Scratch) -> None:
    with contextlib.suppress(Exception):
        client.containers.get(scratch.name).remove(force=True, v=True)
    with contextlib.suppress(Exception):
        client.volumes.get(scratch.volume).remove(force=True)


def manual_steps(settings: Settings) -> dict[str, Any]:
    """Hand procedures for the docs (pgrunbook.docs adds them to its steps)."""
    target = "2026-01-28 01:55:00.000000+00"
    scratch = f"{settings.db_container}-pitr-20260128-020000"
    return {
        "pitr-setup": lambda: setup_commands(settings),
        "pitr-backup-full": lambda: backup_commands(settings, "full"),
        "pitr-backup-diff": lambda: backup_commands(settings, "diff"),
        "pitr-status": lambda: status_commands(settings),
        "pitr-restore-scratch": lambda: restore_commands(settings, target, scratch),
        "pitr-scratch-drop": lambda: drop_commands(scratch),
    }

