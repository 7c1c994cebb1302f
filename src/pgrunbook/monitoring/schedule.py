"""The cron schedule: one template for ``crontab.example`` and ``invoke crontab``.

Both come from ``render`` so they cannot drift (a unit test compares the
file with ``example_text()``). ``install`` puts the block into a user's
crontab between ``# BEGIN pgrunbook <env>`` and ``# END pgrunbook <env>``,
keeps every other line, and writes nothing when the block is already there:
a second install is a no-op. ``crontab`` itself checks the syntax and
refuses a bad file.

Every job appends its output to a log file and, only when it fails, prints
the log's last lines, which cron mails to MAILTO. Each line first creates the
log's folder (``mkdir -p -m 0700``): on a fresh checkout, before any backup,
``backups/<env>/`` does not exist yet and a bare ``>> backups/<env>/cron.log``
would fail every job at once, whether the block was installed by
``--install``, pasted from ``invoke crontab`` or copied from crontab.example.

With PING_URL set, the daily backup job is wrapped in ``invoke ping`` (start,
then success or fail with the job's exit code passed through; see ping.py).
DOCKER_HOST, when set in the shell that prints the block, is written into it:
cron's environment has none, and the jobs must talk to the same engine.

With PITR_STANZA set (point-in-time recovery with pgBackRest, runbooks/pitr.md)
the block also carries ``PITR_JOBS``: the schedule of pgBackRest's user guide
(a full base backup weekly, a differential on the other days), ``pitr-status``
every five minutes (archiving that stalls is found within minutes, and the
metrics stay current) and a monthly ``pitr-drill``. crontab.example shows them
commented out, to be uncommented once PITR_STANZA is set.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import ensure_private_dir
from pgrunbook.core.settings import Settings

BEGIN = "# BEGIN pgrunbook {env}"
END = "# END pgrunbook {env}"
PATH_LINE = "/usr/local/bin:/usr/bin:/bin"
EXAMPLE_CHECKOUT = "/path/to/pgrunbook"
EXAMPLE_INVOKE = ".venv/bin/invoke"
TAIL_LINES = 20

# (minute hour day-of-month month day-of-week, comment, invoke arguments...)
JOBS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("0 2 * * *", "毎日 02:00: バックアップを取り、続けて検証する",
     ("backup --env={env}", "verify --env={env}")),
    ("0 4 * * 0", "毎週日曜 04:00: 最新のバックアップを別 DB に戻して確かめる（リストア試験）",
     ("verify --env={env} --restore-test",)),
    ("0 5 * * *", "毎日 05:00: 保持期間（RETENTION_*）を過ぎたバックアップを削除する",
     ("prune --env={env}",)),
    ("30 * * * *", "毎時 30 分: 最新の検証済みバックアップが 26 時間以内か（止まっていないか）",
     ("status --env={env} --max-age=26h",)),
)

# With PITR_STANZA: pgBackRest's base backups, archive monitoring and the drill (runbooks/pitr.md)
PITR_HEADER = "# ポイントインタイムリカバリ（pgBackRest。PITR_STANZA を設定した環境だけ。runbooks/pitr.md）"
PITR_EXAMPLE_HEADER = ("# ポイントインタイムリカバリ（pgBackRest）: PITR_STANZA を設定したら、次の 4 行の"
                       "先頭の「# 」を外す（invoke crontab は自動で入れます）")
PITR_JOBS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("30 0 * * 0", "毎週日曜 00:30: pgBackRest のフルバックアップ（保持を過ぎたものは pgBackRest が消す）",
     ("pitr-backup --env={env} --type=full",)),
    ("30 0 * * 1-6", "月〜土 00:30: 直近のフルからの差分バックアップ（WAL の再生を短く保つ）",
     ("pitr-backup --env={env} --type=diff",)),
    ("*/5 * * * *", "5 分ごと: WAL のアーカイブが失敗・停滞していないか、"
                    "最新のベースバックアップが 26 時間以内か",
     ("pitr-status --env={env} --backup-max-age=26h",)),
    ("0 3 1 * *", "毎月 1 日 03:00: 訓練（5 分前を別コンテナに戻して本番と比べ、かかった時間を記録）",
     ("pitr-drill --env={env}",)),
)


@dataclass(frozen=True)
class Target:
    env: str
    checkout: str
    invoke: str
    log: str
    mailto: str = "root"
    home: str | None = None  # PGRUNBOOK_HOME when the settings live outside the checkout
    offsite: bool = False  # OFFSITE_BUCKET set: the verified backup also goes offsite
    pitr: bool = False  # PITR_STANZA set: pgBackRest's backups, archive monitoring, drill
    pitr_commented: bool = False  # the example: the PITR jobs as comments to uncomment
    ping: bool = False  # PING_URL set: the daily backup job pings start / success / fail
    docker_host: str | None = None  # DOCKER_HOST of the shell that printed the block
    prestage: bool = False  # RESTORE_PRESTAGE: the restore test follows every backup (prestage.py)


def cron_escape(text: str) -> str:
    """cron turns an unescaped % into a newline."""
    return text.replace("%", "\\%")


def _job(target: Target, schedule: str, commands: tuple[str, ...], ping: bool = False) -> str:
    log = shlex.quote(target.log)
    steps = " && ".join(f"{target.invoke} {c.format(env=target.env)}" for c in commands)
    label = commands[0].split()[0] + ("+" + commands[1].split()[0] if len(commands) > 1 else "")
    stamp = f"echo \"== $(date '+%F %T') {label}\""
    if ping:
        ping_command = f"{target.invoke} ping --env={target.env}"
        steps = (f"since=$(date +%s); {ping_command} --start; {steps}; "
                 f"{ping_command} --exit-code=$? --since=$since")
    folder = posixpath.dirname(target.log)
    make_folder = f"mkdir -p -m 0700 {shlex.quote(folder)} && " if folder else ""
    line = (f"cd {shlex.quote(target.checkout)} && {make_folder}{{ {stamp}; {steps}; }} >> {log} 2>&1"
            f" || tail -n {TAIL_LINES} {log}")
    return f"{schedule} {cron_escape(line)}"


def render(target: Target) -> list[str]:
    """The marked block for one env."""
    lines = [
        BEGIN.format(env=target.env),
        f"# pgrunbook の定期実行（env={target.env}）。invoke crontab --env={target.env} で生成。",
        "# 出力はログに追記し、失敗したときだけ末尾を表示します（cron が MAILTO に送ります）。",
        "SHELL=/bin/bash",
        f"PATH={PATH_LINE}",
        # an empty MAILTO= is a syntax error for Debian's cron ("bad minute"); "" is no mail
        f"MAILTO={target.mailto}" if target.mailto else 'MAILTO=""',
    ]
    if target.home:
        lines.append(f"PGRUNBOOK_HOME={target.home}")
    if target.docker_host:
        lines.append(f"DOCKER_HOST={target.docker_host}")
    for schedule, comment, commands in JOBS:
        daily_backup = commands[0].startswith("backup ")
        if target.prestage and commands[0].endswith("--restore-test"):
            continue  # it runs every night with the backup instead
        if target.offsite and daily_backup:
            comment += "。検証できたらオフサイトへ暗号化して送る"
            commands = (*commands, "offsite-push --env={env}")
        if target.prestage and daily_backup:
            comment += "。続けて復元テストし、その DB を事前展開 DB として残す（RESTORE_PRESTAGE）"
            commands = (*commands, "verify --env={env} --restore-test")
        if target.ping and daily_backup:
            comment += "。開始・成功・失敗を PING_URL（死活監視）に知らせる"
        lines += [f"# {comment}", _job(target, schedule, commands, ping=target.ping and daily_backup)]
    lines += _pitr_lines(target)
    lines.append(END.format(env=target.env))
    return lines


def _pitr_lines(target: Target) -> list[str]:
    if not (target.pitr or target.pitr_commented):
        return []
    lines = [PITR_EXAMPLE_HEADER if target.pitr_commented and not target.pitr else PITR_HEADER]
    for schedule, comment, commands in PITR_JOBS:
        job = _job(target, schedule, commands)
        lines += [f"# {comment}", job if target.pitr else f"# {job}"]
    return lines


EXAMPLE_HEADER = [
    "# pgrunbook の定期実行の見本（本番 prod）。",
    "# このファイルは src/pgrunbook/schedule.py から生成しています（invoke crontab --example）。",
    "# このチェックアウトの絶対パスを埋めた版は invoke crontab --env=prod で表示、",
    "# invoke crontab --env=prod --install でこのユーザーの crontab に登録できます。",
    "# 手で使う場合は /path/to/pgrunbook を置き換えます。各行がログの置き場所（backups/prod、0700）を",
    "# 自分で作るので、バックアップがまだ 1 つもない新しいチェックアウトでもそのまま動きます。",
    "# SHELL / PATH / MAILTO はこれより後の行すべてに効くため、crontab の末尾に置きます。",
    "",
]


def example_target() -> Target:
    return Target(env="prod", checkout=EXAMPLE_CHECKOUT, invoke=EXAMPLE_INVOKE,
                  log="backups/prod/cron.log", pitr_commented=True)


def example_text() -> str:
    return "\n".join(EXAMPLE_HEADER + render(example_target())) + "\n"


def current_invoke() -> str:
    """The invoke of the running Python (a venv's bin/invoke when there is one)."""
    candidate = Path(sys.executable).parent / "invoke"
    if candidate.is_file():
        return shlex.quote(str(candidate))
    return f"{shlex.quote(sys.executable)} -m invoke"


def target_for(settings: Settings, checkout: Path, mailto: str = "root") -> Target:
    if not re.match(r"^[A-Za-z0-9@._+,-]*$", mailto):
        raise RunbookError(
            f"--mailto={mailto!r} は使えません", "メールアドレスかユーザー名（空なら送信なし）", 2
        )
    checkout = checkout.resolve()
    home = None if settings.config_dir.resolve() == checkout else str(settings.config_dir)
    docker_host = os.environ.get("DOCKER_HOST", "").strip()
    if docker_host and not re.match(r"^[A-Za-z0-9+.-]+://[^\s%]+$", docker_host):
        raise RunbookError(f"DOCKER_HOST={docker_host!r} は crontab に書けません",
                           "unix:///var/run/docker.sock や tcp://127.0.0.1:2375 の形にする", 2)
    target = Target(env=settings.env, checkout=str(checkout), invoke=current_invoke(),
                  log=str(settings.backup_dir / "cron.log"), mailto=mailto, home=home,
                  offsite=bool(settings.offsite_bucket), ping=bool(settings.ping_url),
                  prestage=settings.restore_prestage,
                  docker_host=docker_host or None)
    return replace(target, pitr=bool(settings.pitr_stanza))


# ---- the user's crontab -------------------------------------------------------------


def without_block(lines: list[str], env: str) -> tuple[list[str], list[str] | None]:
    """The crontab without our block for env, and the block found (or None)."""
    begin, end = BEGIN.format(env=env), END.format(env=env)
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if not starts and not ends:
        return lines, None
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise RunbookError(
            f"crontab の「{begin}」〜「{end}」の組が壊れています（自動では直しません）",
            "crontab -e で pgrunbook のブロックを手で削除してから再実行",
        )
    rest = lines[: starts[0]] + lines[ends[0] + 1 :]
    return rest, lines[starts[0] : ends[0] + 1]


def merged(current: list[str], block: list[str], env: str) -> list[str]:
    """Other lines kept; our block replaced, or appended at the end (env lines apply below)."""
    rest, found = without_block(current, env)
    if found == block:
        return current
    while rest and not rest[-1].strip():
        rest = rest[:-1]
    return rest + ([""] if rest else []) + block


def _crontab(args: list[str], user: str | None, stdin: str | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("crontab")
    if not binary:
        raise RunbookError("crontab コマンドがありません", "apt-get install cron（Debian/Ubuntu）")
    argv = [binary] + (["-u", user] if user else []) + args
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)


def read_crontab(user: str | None = None) -> list[str]:
    done = _crontab(["-l"], user)
    if done.returncode != 0:
        if "no crontab" in done.stderr:
            return []
        raise RunbookError(f"crontab -l が失敗しました: {done.stderr.strip()}")
    return done.stdout.splitlines()


def write_crontab(lines: list[str], user: str | None = None) -> None:
    done = _crontab(["-"], user, "\n".join(lines) + "\n")
    if done.returncode != 0:
        raise RunbookError(
            f"crontab が登録を拒否しました: {' '.join(done.stderr.split())}",
            "crontab -l で現在の内容を確認（何も変更していません）",
        )


def install(block: list[str], env: str, user: str | None = None,
            log_dir: Path | None = None) -> bool:
    """Put the block into the crontab. False when it was already there (nothing written).

    ``log_dir`` is created first: cron cannot append to a log in a missing folder.
    """
    if log_dir is not None:
        ensure_private_dir(log_dir)
    current = read_crontab(user)
    wanted = merged(current, block, env)
    if wanted == current:
        return False
    write_crontab(wanted, user)
    if read_crontab(user) != wanted:
        raise RunbookError("登録後の crontab -l が書き込んだ内容と一致しません", "crontab -l で確認")
    return True


def remove(env: str, user: str | None = None) -> bool:
    current = read_crontab(user)
    rest, found = without_block(current, env)
    if found is None:
        return False
    while rest and not rest[-1].strip():
        rest = rest[:-1]
    write_crontab(rest, user)
    return True
