"""One writer per database: a second run fails fast naming the holder; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from helpers import PASSWORD, ROOT, wait_for

HOLD_LOCK = """
import sys, time
from pathlib import Path
from pgrunbook.core.safety import exclusive_lock
with exclusive_lock(Path(sys.argv[1]), sys.argv[2], sys.argv[3], "backup"):
    print("held", flush=True)
    time.sleep(600)
"""


def start_backup(cli) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "backup", "--env=prod"],
        cwd=cli.home, env={**os.environ, "PGRUNBOOK_HOME": str(cli.home)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def lock_holder(path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def test_two_concurrent_backups_one_fails_fast_naming_the_holder(cli, pg):
    # no row counts: pg_dump itself must be what waits on the held table lock
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD, ROW_COUNTS="false")
    app_name = pg.hold_table_lock("audit.audit_log", 120)
    lock_file = cli.backup_dir("prod") / ".lock-app"
    first = start_backup(cli)
    try:
        wait_for(lambda: lock_holder(lock_file).get("pid") == first.pid, "the first backup's lock")
        holder = lock_holder(lock_file)
        second = cli("backup", "--env=prod")
        assert first.poll() is None, "the second run waited for the first"
        assert second.returncode == 1
        assert "別の作業が実行中" in second.stderr
        assert f"pid={first.pid}" in second.stderr
        assert f"host={socket.gethostname()}" in second.stderr
        assert f"開始={holder['started_at']}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app_name}'",
                "postgres")
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert os.path.exists(stdout.strip().splitlines()[-1])
    log = [json.loads(line) for line in (cli.backup_dir("prod") / "worklog.jsonl").read_text().splitlines()]
    assert [r["result"] for r in log if r["task"] == "backup"] == ["failed", "ok"]
    assert lock_file.read_text() == ""  # released and emptied


def test_a_lock_left_by_a_killed_process_is_taken_over(cli, pg):
    directory = cli.backup_dir("prod")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory), pg.name, "app"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        blocked = cli("backup", "--env=prod")
        assert blocked.returncode == 1 and f"pid={holder.pid}" in blocked.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    lock_file = directory / ".lock-app"
    assert lock_holder(lock_file).get("pid") == holder.pid  # the dead holder's note is still there
    result = cli("backup", "--env=prod")
    assert result.returncode == 0, result.stderr
    assert lock_file.read_text() == ""
