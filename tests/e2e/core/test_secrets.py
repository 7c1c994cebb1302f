"""The password never shows: not in output, manifest, work log, nor pg_dump's argv."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from helpers import PASSWORD, ROOT, last_line

LIST_ARGV = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


def test_password_never_appears(cli, pg):
    # no row counts: the count(*) would wait for the lock instead of pg_dump
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD, ROW_COUNTS="false")
    # hold a lock so that pg_dump waits inside the container while we read every argv
    pg.hold_table_lock("audit.audit_log", 3)
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "backup", "--env=prod"],
        cwd=cli.home, env={**os.environ, "PGRUNBOOK_HOME": str(cli.home)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen_pg_dump = False
    argv_dump = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        _, out, _ = pg.exec(["sh", "-c", LIST_ARGV])
        argv_dump += out.decode("utf-8", "replace")
        if "pg_dump -U app" in out.decode("utf-8", "replace"):
            seen_pg_dump = True
        time.sleep(0.1)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert seen_pg_dump, "pg_dump was never seen running"
    assert PASSWORD not in argv_dump

    path = last_line(stdout)
    assert PASSWORD not in stdout + stderr
    assert PASSWORD not in open(path + ".json").read()
    assert PASSWORD not in open(path + ".sha256").read()
    assert PASSWORD not in (cli.backup_dir("prod") / "worklog.jsonl").read_text()
    dry = cli("backup", "--env=prod", "--dry-run")
    assert PASSWORD not in dry.stdout + dry.stderr


def test_password_from_scoped_environment_variable(cli, pg):
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app")
    result = cli("backup", "--env=prod", env={"PGRUNBOOK_PROD_DB_PASSWORD": PASSWORD})
    assert result.returncode == 0, result.stderr
    # an unscoped PGPASSWORD in the shell is not used
    result = cli("backup", "--env=prod", env={"PGPASSWORD": PASSWORD})
    assert result.returncode == 1 and "パスワード" in result.stderr
