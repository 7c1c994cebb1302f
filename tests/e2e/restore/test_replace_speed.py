"""What the replace does for its speed and its write downtime, through the real CLI
(behaviour only: no time is asserted; the numbers are in runbooks/performance.md)."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone

from helpers import APP_COMMAND, IMAGE, PASSWORD, last_line

CHECKPOINT_LOG = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] LOG:  checkpoint (starting|complete):"
    r"(.*)$", re.MULTILINE)


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def test_replace_writes_the_restored_data_out_before_the_apps_stop(cli, pg, docker_engine):
    """A CHECKPOINT requested by the kit completes after the staging restore and
    before the app container's stop (kill event), so that the writeback of the
    restored data does not fall into the write downtime."""
    database = f"live_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, sample=True)
    app_name = f"pgrunbook-app-speed-{uuid.uuid4().hex[:6]}"
    app = docker_engine.containers.run(IMAGE, APP_COMMAND, name=app_name, detach=True,
                                       network_mode="none", entrypoint=[],
                                       labels={"pgrunbook.test": "1"})
    container = docker_engine.containers.get(pg.name)
    try:
        cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=database, DB_PASSWORD=PASSWORD,
                      APP_CONTAINERS=app_name)
        backup = cli("backup", "--env=prod")
        assert backup.returncode == 0, backup.stderr
        pg.psql("CHECKPOINT", "postgres")  # nothing of the test's own set-up is left to write
        since = time.time()
        time.sleep(1.1)  # the logs' and the events' "since" are whole seconds
        result = cli("restore-replace", "--env=prod", f"--file={last_line(backup.stdout)}",
                     "--confirm=prod", env={"PGRUNBOOK_VERBOSE": "1"})
        until = time.time()
        assert result.returncode == 0, result.stderr
        assert "CHECKPOINT" in result.stderr
        events = docker_engine.events(since=int(since), until=int(until) + 1,
                                      filters={"container": app.id}, decode=True)
        kills = [int(e["timeNano"]) / 1e9 for e in events if (e.get("Action") or e.get("status")) == "kill"]
        assert kills, "the app container was not stopped"
        logs = container.logs(since=int(since), timestamps=False).decode()
        requested = [(kind, _stamp(stamp)) for stamp, kind, detail in CHECKPOINT_LOG.findall(logs)
                     if (kind == "complete" or "immediate" in detail) and _stamp(stamp) > since]
        started = [stamp for kind, stamp in requested if kind == "starting"]
        assert started and started[0] < kills[0], (logs, kills)
        assert any(kind == "complete" and started[0] <= stamp < kills[0] for kind, stamp in requested)
    finally:
        app.remove(force=True)
        for db in pg.psql("SELECT datname FROM pg_database", "postgres").split():
            if db.startswith(database):
                pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', "postgres")
