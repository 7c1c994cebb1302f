"""The printed schedule under Debian's real cron daemon, on a fresh checkout (issue 13).

The block ``invoke crontab`` prints is installed by hand (as an operator who
pastes it would, not with ``--install``, which creates the folder) into
root's crontab, with the daily backup's schedule changed to every minute. cron
runs it with its own bare environment (PATH from the block, no venv, no
PGRUNBOOK_TEST_IMAGE, no DOCKER_HOST unless the block carries it). The test
waits for the first run, then finds a verified backup, the log line and the
pings, removes the block and stops the daemon it started, by its PID.

The wait is bounded: cron starts jobs on its minute; the daemon the test
started is started again with its own clock at second 58 (``cron_daemon.soon``:
its jobs still get cron's bare environment and the real time), so the first run
begins about two seconds later; the test gives up after WAIT_SECONDS.
"""

from __future__ import annotations

import subprocess
import time
import uuid

from helpers import PASSWORD, WAIT_SECONDS, Cli, jobs_of
from helpers.loopback_http import Recorder
from pgrunbook.core import worklog
from pgrunbook.monitoring import schedule


def test_printed_block_works_under_real_cron_on_a_fresh_checkout(pg, tmp_path, cron_daemon):
    env = f"cron{uuid.uuid4().hex[:6]}"
    home = tmp_path / "checkout-home"
    home.mkdir()
    cli = Cli(home)
    pings = Recorder().start()
    cli.write_env(env, DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                  PING_URL=pings.base + "/ping/cron-check")
    backup_dir = cli.backup_dir(env)
    assert not backup_dir.exists()  # a fresh checkout: no backups folder yet

    printed = cli("crontab", f"--env={env}", "--mailto=")
    assert printed.returncode == 0, printed.stderr
    block = printed.stdout.splitlines()
    daily = [i for i, line in enumerate(block) if line.startswith("0 2 * * * ")]
    assert len(daily) == 1, printed.stdout
    block[daily[0]] = "* * * * * " + block[daily[0]][len("0 2 * * * "):]

    before = schedule.read_crontab()
    schedule.write_crontab(schedule.merged(before, block, env))
    cron_daemon.soon()
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        records: list[dict] = []
        while time.monotonic() < deadline:
            records = worklog.read(backup_dir / "worklog.jsonl")
            if any(r["task"] == "verify" and r["result"] == "ok" for r in records) \
                    and "/ping/cron-check" in pings.paths():
                break
            time.sleep(2)
        log = backup_dir / "cron.log"
        assert log.is_file(), (
            f"cron did not run the job within {WAIT_SECONDS} s (or could not write its log); "
            f"work log: {records}")
        assert any(r["task"] == "verify" and r["result"] == "ok" for r in records), log.read_text()
    finally:
        schedule.remove(env)
        if not before and schedule.read_crontab() == []:
            subprocess.run(["crontab", "-r"], capture_output=True)  # root had none: leave none
        gone = time.monotonic() + 60
        while jobs_of(env) and time.monotonic() < gone:
            time.sleep(1)  # a run that began before the removal ends by itself
        pings.stop()

    text = log.read_text()
    assert "backup+verify" in text and text.startswith("== ")
    assert oct(backup_dir.stat().st_mode & 0o777) == "0o700"
    assert pings.paths()[:2] == ["/ping/cron-check/start", "/ping/cron-check"]
    status = cli("status", f"--env={env}")
    assert status.returncode == 0 and status.stdout.startswith("OK "), status.stdout + status.stderr
    after = schedule.read_crontab()
    assert f"# BEGIN pgrunbook {env}" not in "\n".join(after)
