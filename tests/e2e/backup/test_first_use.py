"""What a new user ran into (issue 11, "Also seen when tried as a new user would"):
list trusting a truncated file, a silent SIGTERM, an English list header on a
terminal, and restore-scratch picking a file without a word.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from helpers import PASSWORD, ROOT, backup_like_files, last_line, wait_for


def made(cli, task: str = "backup") -> Path:
    result = cli(task, "--env=prod")
    assert result.returncode == 0, result.stderr
    return Path(last_line(result.stdout))


def test_list_never_shows_a_truncated_file_as_verified(cli, pg):
    backup = made(cli)
    assert cli("verify", "--env=prod").returncode == 0
    row = cli("list", "--env=prod").stdout.splitlines()[-1].split("\t")
    assert row[4].startswith("済") and row[5] == "ok"
    os.truncate(backup, backup.stat().st_size // 2)
    row = cli("list", "--env=prod").stdout.splitlines()[-1].split("\t")
    assert row[5] == "不一致"
    assert not row[4].startswith("済"), row


def test_sigterm_says_what_happened_like_ctrl_c(cli, pg):
    # no row counts: the count(*) would wait for the lock instead of pg_dump
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD, ROW_COUNTS="false")
    pg.hold_table_lock("audit.audit_log", 6)
    directory = cli.backup_dir("prod")
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "backup", "--env=prod"],
        cwd=cli.home, env={**os.environ, "PGRUNBOOK_HOME": str(cli.home)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(directory.glob("*.partial")):
        time.sleep(0.05)
    assert list(directory.glob("*.partial")), "the backup never started"
    wait_for(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                             "AND query LIKE 'LOCK TABLE%'", "app").strip() != "0",
             "pg_dump waiting for the table lock")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "中断" in stderr and "SIGTERM" in stderr, stderr
    assert "Traceback" not in stderr
    assert backup_like_files(directory) == []
    log = [json.loads(line) for line in (directory / "worklog.jsonl").read_text().splitlines()]
    assert log[-1]["result"] == "interrupted", log[-1]


def test_list_on_a_terminal_speaks_japanese(cli, pg):
    made(cli)
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "list", "--env=prod"],
        stdout=slave, stderr=subprocess.PIPE, cwd=cli.home,
        env={**os.environ, "PGRUNBOOK_HOME": str(cli.home)},
    )
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        output += chunk
    process.wait(timeout=60)
    os.close(master)
    header = output.decode("utf-8").splitlines()[0]
    assert process.returncode == 0
    assert "名前" in header and "作成日時" in header and "チェックサム" in header, header
    assert "name" not in header and "checksum" not in header, header


def test_restore_scratch_without_file_takes_the_newest_verified_dump_and_says_so(cli, pg):
    dump = made(cli)
    assert cli("verify", "--env=prod").returncode == 0
    sql = made(cli, "backup-sql")  # newer, and verified too
    assert cli("verify", "--env=prod", f"--file={sql}").returncode == 0
    newest_unverified = made(cli)  # newest of all, but never verified
    scratch = f"app_pick_{uuid.uuid4().hex[:8]}"
    try:
        result = cli("restore-scratch", "--env=prod", f"--db={scratch}", env={"PGRUNBOOK_VERBOSE": "1"})
        assert result.returncode == 0, result.stderr
        chosen = [line for line in result.stderr.splitlines() if dump.name in line]
        assert chosen and chosen[0].startswith("・"), result.stderr  # a step line names the file
        assert sql.name not in result.stderr and newest_unverified.name not in result.stderr
        log = [json.loads(line) for line in (cli.backup_dir("prod") / "worklog.jsonl").read_text().splitlines()]
        assert log[-1]["task"] == "restore-scratch" and log[-1]["file"] == str(dump)
    finally:
        pg.psql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)', "postgres")
