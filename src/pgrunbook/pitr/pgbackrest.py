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

import json
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.infra.container import Container, ExecResult, MissingCommand
from pgrunbook.infra.framing import answered, lost_answer
from pgrunbook.infra.postgres import (
    Postgres,
)

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
    complete: bool = True  # False: the engine lost the output (framing.py); the exit code stands

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


@dataclass(frozen=True)
class Stanza:
    """Where pgBackRest runs for one stanza: the container (the DB's, or a scratch helper
    beside it), the env's settings, the stanza's name, and the console its steps go to."""

    container: Container
    settings: Settings
    name: str
    console: Console


def run_pgbackrest(stanza: Stanza, args: list[str], what: str, quiet: bool = False) -> Output:
    """pgbackrest as the postgres OS user; its log lines shown as steps, its errors one line."""
    container, settings, console = stanza.container, stanza.settings, stanza.console
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
        result: ExecResult = container.exec_framed(
            ["pgbackrest", f"--stanza={stanza.name}", *args], environment=environment,
            on_stdout=on_stdout, user="postgres",
        )
    except MissingCommand:
        raise _no_pgbackrest(container) from None
    output = Output(result.exit_code, buffer.decode("utf-8", "replace") + "\n" + result.stderr,
                    result.complete)
    if not result.ok:
        line = (output.error_line() if result.complete
                else f"終了コード {result.exit_code}（出力は届きませんでした）")
        raise RunbookError(f"pgBackRest の {what} が失敗しました: {line}", _hint_for(what, line, settings))
    return output


def repository_backups(stanza: Stanza, what: str) -> list[BackupSet]:
    """The stanza's base backups from ``pgbackrest info --output=json``, read whole:
    asked again when the engine lost the answer (framing.py), never read as "none"."""

    def ask() -> list[BackupSet]:
        info = run_pgbackrest(stanza, ["--output=json", "info"], what, quiet=True)
        if not info.complete:
            raise lost_answer(stanza.container.name, "pgbackrest info")
        try:
            json.loads(info.json_line())
        except ValueError:
            by_hand = _pgbackrest_line(stanza.settings, "--output=json", "info")
            raise RunbookError(f"pgbackrest info の出力を読めません: {info.json_line()[:120]}",
                               f"手で確かめる: {by_hand}") from None
        return backup_sets(info.json_line(), stanza.name)

    return answered(ask)


def _no_pgbackrest(container: Container) -> RunbookError:
    return RunbookError(
        f"コンテナ {container.name} に pgbackrest がありません",
        "examples/pitr/Dockerfile のイメージ（pgBackRest 入り）で DB コンテナを作り直す（runbooks/pitr.md）",
    )


def pgbackrest_version(container: Container) -> str:
    try:
        result = container.run(["pgbackrest", "version"])
    except MissingCommand:
        raise _no_pgbackrest(container) from None
    if not result.ok:
        raise _no_pgbackrest(container)
    return result.stdout.decode("utf-8", "replace").strip()


def server_time(value: str | None) -> datetime | None:
    if not value:
        return None
    text = value.replace(" ", "T")
    if re.search(r"[+-]\d\d$", text):
        text += ":00"
    return datetime.fromisoformat(text)


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


def live_server(settings: Settings) -> tuple[Container, Postgres]:
    container = Container.find(settings.db_container)
    return container, Postgres(container, settings)


def stanza_lock(settings: Settings, task: str):
    return exclusive_lock(settings.backup_dir, settings.db_container, f"pitr-{settings.pitr_stanza}", task)


def work_entry(settings: Settings, task: str) -> worklog.Entry:
    return worklog.Entry(task, settings.env, settings.db_name, settings.db_container,
                         details={"stanza": settings.pitr_stanza})


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

