"""PITR operations: the metrics pitr-status writes, and its cron line under the real daemon.

On the real engine with the pgBackRest container of examples/pitr (as in
test_pitr.py, whose helpers build and start it), through the real CLI. The
metrics are read back from METRICS_FILE with prometheus-client's parser.
Archiving is broken on purpose by taking the repository's archive folder away
from the postgres user (chmod 000, as a wrong owner or a read-only mount
would), then repaired: the metrics must show the failure and the recovery.

Skipped when the pgBackRest base image is absent (see test_pitr.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from helpers import PASSWORD, WAIT_SECONDS, Cli, jobs_of, last_line, wait_for
from helpers.pitr import (
    BASE_IMAGE,
    CIPHER_PASS,
    EXAMPLE,
    STANZA,
    exec_in,
    psql,
    remove_with_volumes,
    start_from_compose,
)
from pgrunbook.monitoring import schedule

RUN = uuid.uuid4().hex[:8]

ARCHIVE = "/var/lib/pgbackrest/archive"


@pytest.fixture(scope="module")
def live(engine):
    tag = f"pgrunbook-test-pitrops-{RUN}:15"
    engine.images.build(path=str(EXAMPLE), tag=tag, buildargs={"POSTGRES_IMAGE": BASE_IMAGE},
                        network_mode="none", rm=True, forcerm=True, labels={"pgrunbook.test": "1"})
    container = start_from_compose(engine, tag, f"pgrunbook-test-pitrops-{RUN}")
    container.reload()
    yield container
    for scratch in engine.containers.list(all=True, filters={"label": f"pgrunbook.pitr-source={container.name}"}):
        remove_with_volumes(engine, scratch)
    remove_with_volumes(engine, container)
    engine.images.remove(tag, force=True)


def samples(path_or_text: Path | str) -> dict[tuple[str, str, str | None], float]:
    """(name, env, type label) -> value; every family a gauge with help."""
    from prometheus_client.parser import text_string_to_metric_families

    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    found = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge" and family.documentation, family.name
        for sample in family.samples:
            assert set(sample.labels) - {"type"} == {"env"}, sample
            found[(sample.name, sample.labels["env"], sample.labels.get("type"))] = sample.value
    return found


def pitr_only(found: dict) -> dict[str, float]:
    """This test's env, PITR families only, keyed "name" or "name{type}"."""
    return {(name if kind is None else f"{name}{{{kind}}}"): value
            for (name, env, kind), value in found.items() if env == "prod" and name.startswith("pgrunbook_pitr_")}


def archived_count(container) -> int:
    return int(psql(container, "SELECT archived_count FROM pg_stat_archiver"))


def switch_and_wait(container, what: str, condition) -> None:
    psql(container, "CREATE TABLE IF NOT EXISTS ticks (at timestamptz DEFAULT clock_timestamp())")
    psql(container, "INSERT INTO ticks DEFAULT VALUES")
    psql(container, "SELECT pg_switch_wal()")
    wait_for(condition, what, 120)


def set_archive_folder_mode(container, mode: str) -> None:
    code, output = exec_in(container, ["chmod", mode, ARCHIVE])  # as root
    assert code == 0, output


def test_metrics_show_archiving_backups_drills_and_a_broken_archive(engine, live, tmp_path):
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    metrics_file = textfile / "pgrunbook.prom"
    home = Cli(tmp_path)
    home.write_env("prod", DB_CONTAINER=live.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                   PITR_STANZA=STANZA, METRICS_FILE=str(metrics_file))
    began = time.time()

    setup = home("pitr-setup", "--env=prod")
    assert setup.returncode == 0, setup.stderr
    never = pitr_only(samples(metrics_file))  # rewritten after the work-log line
    assert never["pgrunbook_pitr_status_exit_code"] == 2  # no pitr-status yet: not "ok"
    assert never["pgrunbook_pitr_status_timestamp_seconds"] == 0
    assert never["pgrunbook_pitr_backups{full}"] == 0
    assert never["pgrunbook_pitr_drill_last_success"] == 0

    full = home("pitr-backup", "--env=prod", "--type=full")
    assert full.returncode == 0, full.stderr
    after_backup = pitr_only(samples(metrics_file))  # pitr-backup refreshed the repository's list
    assert after_backup["pgrunbook_pitr_backups{full}"] == 1
    assert began - 5 <= after_backup["pgrunbook_pitr_backup_last_timestamp_seconds{full}"] <= time.time() + 5
    assert after_backup["pgrunbook_pitr_backups{diff}"] == 0
    assert after_backup["pgrunbook_pitr_backup_last_timestamp_seconds{diff}"] == 0
    assert after_backup["pgrunbook_pitr_backups{incr}"] == 0

    # --- healthy
    before = archived_count(live)
    switch_and_wait(live, "a WAL segment archived", lambda: archived_count(live) > before)
    ok = home("pitr-status", "--env=prod")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    healthy = pitr_only(samples(metrics_file))
    assert healthy["pgrunbook_pitr_status_exit_code"] == 0
    assert time.time() - 30 <= healthy["pgrunbook_pitr_status_timestamp_seconds"] <= time.time()
    last_archived = healthy["pgrunbook_pitr_wal_last_archived_timestamp_seconds"]
    assert began - 5 <= last_archived <= time.time() + 1
    assert healthy["pgrunbook_pitr_archive_failures"] == 0
    assert healthy["pgrunbook_pitr_archive_failing"] == 0
    assert healthy["pgrunbook_pitr_archive_last_failed_timestamp_seconds"] == 0
    assert healthy["pgrunbook_pitr_wal_waiting_segments"] == 0
    assert healthy["pgrunbook_pitr_wal_oldest_waiting_timestamp_seconds"] == 0
    printed = home("pitr-status", "--env=prod", "--format=prometheus")
    assert printed.returncode == 0, printed.stderr
    assert pitr_only(samples(printed.stdout)).keys() == healthy.keys()
    assert sorted(p.name for p in textfile.iterdir()) == ["pgrunbook.prom"]  # no temporary left
    observation = home.backup_dir("prod") / ".pitr-status.json"
    assert oct(observation.stat().st_mode & 0o777) == "0o600"

    # --- archiving broken: the repository's archive folder taken from the postgres user
    set_archive_folder_mode(live, "000")
    try:
        failures = int(psql(live, "SELECT failed_count FROM pg_stat_archiver"))
        switch_and_wait(live, "a failed archive attempt",
                        lambda: int(psql(live, "SELECT failed_count FROM pg_stat_archiver")) > failures)
        broken = home("pitr-status", "--env=prod")
        assert broken.returncode == 2, broken.stdout + broken.stderr
        assert "のアーカイブが失敗しています" in last_line(broken.stdout)
        stalled = pitr_only(samples(metrics_file))
        assert stalled["pgrunbook_pitr_status_exit_code"] == 2
        assert stalled["pgrunbook_pitr_archive_failing"] == 1
        assert stalled["pgrunbook_pitr_archive_failures"] >= 1
        assert last_archived < stalled["pgrunbook_pitr_archive_last_failed_timestamp_seconds"] <= time.time() + 1
        assert stalled["pgrunbook_pitr_wal_last_archived_timestamp_seconds"] <= \
            stalled["pgrunbook_pitr_archive_last_failed_timestamp_seconds"]  # archiving stopped there
        assert stalled["pgrunbook_pitr_wal_waiting_segments"] >= 1
        assert began <= stalled["pgrunbook_pitr_wal_oldest_waiting_timestamp_seconds"] <= time.time() + 1
        # the backups were not read this time: they stay as last seen
        assert stalled["pgrunbook_pitr_backups{full}"] == 1
        saved = observation.read_text()
        assert "のアーカイブが失敗しています" in saved and PASSWORD not in saved and CIPHER_PASS not in saved

        # a drill cannot pass while WAL does not reach the repository
        drill = home("pitr-drill", "--env=prod", "--minutes=0.1")
        assert drill.returncode == 1, drill.stdout + drill.stderr
        failed_drill = pitr_only(samples(metrics_file))
        assert failed_drill["pgrunbook_pitr_drill_last_success"] == 0
        assert time.time() - 300 <= failed_drill["pgrunbook_pitr_drill_last_timestamp_seconds"] <= time.time() + 1
    finally:
        set_archive_folder_mode(live, "750")

    # --- repaired: the waiting segments go out and the metrics say so
    failed_once = archived_count(live)
    switch_and_wait(live, "archiving to resume", lambda: archived_count(live) > failed_once
                    and psql(live, "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")
                    == "0")
    again = home("pitr-status", "--env=prod")
    assert again.returncode == 0, again.stdout + again.stderr
    repaired = pitr_only(samples(metrics_file))
    assert repaired["pgrunbook_pitr_archive_failing"] == 0
    assert repaired["pgrunbook_pitr_wal_last_archived_timestamp_seconds"] > \
        stalled["pgrunbook_pitr_archive_last_failed_timestamp_seconds"] - 1
    assert repaired["pgrunbook_pitr_wal_waiting_segments"] == 0
    assert repaired["pgrunbook_pitr_archive_failures"] >= stalled["pgrunbook_pitr_archive_failures"]

    diff = home("pitr-backup", "--env=prod", "--type=diff")
    assert diff.returncode == 0, diff.stderr
    time.sleep(8)  # the drill's target (6 s ago) must lie after the differential
    drill = home("pitr-drill", "--env=prod", "--minutes=0.1")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    drilled = pitr_only(samples(metrics_file))
    assert drilled["pgrunbook_pitr_drill_last_success"] == 1
    assert drilled["pgrunbook_pitr_drill_last_duration_seconds"] > 0
    assert time.time() - 300 <= drilled["pgrunbook_pitr_drill_last_timestamp_seconds"] <= time.time() + 1
    assert drilled["pgrunbook_pitr_backups{diff}"] == 1
    assert drilled["pgrunbook_pitr_backup_last_timestamp_seconds{diff}"] > \
        drilled["pgrunbook_pitr_backup_last_timestamp_seconds{full}"]
    assert not any(math.isnan(value) for value in drilled.values())
    # status (the kit's hourly job) prints the same PITR samples from the saved observation
    status = home("status", "--env=prod", "--format=prometheus")
    assert status.returncode == 0, status.stderr
    assert pitr_only(samples(status.stdout)) == drilled


def test_an_env_without_a_stanza_has_no_pitr_metrics(engine, live, tmp_path):
    metrics_file = tmp_path / "pgrunbook.prom"
    home = Cli(tmp_path)
    home.write_env("prod", DB_CONTAINER=live.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                   METRICS_FILE=str(metrics_file))
    printed = home("status", "--env=prod", "--format=prometheus")
    assert printed.returncode == 0, printed.stderr
    assert "pgrunbook_backups" in printed.stdout and "pgrunbook_pitr_" not in printed.stdout
    refused = home("pitr-status", "--env=prod")
    assert refused.returncode == 2 and "PITR_STANZA" in refused.stdout
    assert not (home.backup_dir("prod") / ".pitr-status.json").exists()


def test_an_unreachable_db_shows_as_status_2_and_a_bad_metrics_file_only_warns(tmp_path):
    """No pgBackRest needed: the container is missing. What was seen before stays as last seen."""
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    home = Cli(tmp_path)
    home.write_env("prod", DB_CONTAINER=f"pgrunbook-pitrops-missing-{RUN}", PITR_STANZA=STANZA,
                   METRICS_FILE=str(textfile / "pgrunbook.prom"))
    observation = home.backup_dir("prod") / ".pitr-status.json"
    observation.parent.mkdir(parents=True)
    observation.write_text(json.dumps({"checked": 1.0, "exit_code": 0, "archiver": {
        "last_archived": 1700000000.0, "failed_count": 0, "failing": False, "waiting": 0},
        "backups": [{"label": "20231114-221320F", "type": "full", "stop": 1699999000.0}]}))
    began = time.time()
    done = home("pitr-status", "--env=prod")
    assert done.returncode == 2 and last_line(done.stdout).startswith("CRITICAL env=prod"), done.stdout
    found = pitr_only(samples(textfile / "pgrunbook.prom"))
    assert found["pgrunbook_pitr_status_exit_code"] == 2
    assert began - 1 <= found["pgrunbook_pitr_status_timestamp_seconds"] <= time.time()
    assert found["pgrunbook_pitr_wal_last_archived_timestamp_seconds"] == 1700000000  # kept: not read
    assert found["pgrunbook_pitr_backup_last_timestamp_seconds{full}"] == 1699999000

    home.write_env("prod", DB_CONTAINER=f"pgrunbook-pitrops-missing-{RUN}", PITR_STANZA=STANZA,
                   METRICS_FILE=str(tmp_path / "missing-folder" / "pgrunbook.prom"))
    again = home("pitr-status", "--env=prod")
    assert again.returncode == 2, again.stdout + again.stderr  # the verdict, not the metrics' trouble
    assert "警告" in again.stderr and "missing-folder" in again.stderr
    assert not (tmp_path / "missing-folder").exists()
    assert json.loads(observation.read_text())["checked"] > found["pgrunbook_pitr_status_timestamp_seconds"]
    assert sorted(p.name for p in observation.parent.iterdir()) == [".pitr-status.json"]  # no temporary


def test_printed_pitr_status_line_works_under_real_cron(engine, live, tmp_path, cron_daemon):
    """As test_cron_daemon.py does for the daily backup: the block is installed by hand with the
    pitr-status line moved to every minute; cron's bare environment runs it."""
    env = f"pitrcron{uuid.uuid4().hex[:6]}"
    home_dir = tmp_path / "checkout-home"
    home_dir.mkdir()
    home = Cli(home_dir)
    metrics_file = tmp_path / "pgrunbook.prom"
    home.write_env(env, DB_CONTAINER=live.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                   PITR_STANZA=STANZA, METRICS_FILE=str(metrics_file))
    if home("pitr-status", f"--env={env}").returncode != 0:  # set up and backed up by the test above?
        assert home("pitr-setup", f"--env={env}").returncode == 0
        assert home("pitr-backup", f"--env={env}", "--type=full").returncode == 0
    observation = home.backup_dir(env) / ".pitr-status.json"
    observation.unlink()
    printed = home("crontab", f"--env={env}", "--mailto=")
    assert printed.returncode == 0, printed.stderr
    block = printed.stdout.splitlines()
    every_five = [i for i, line in enumerate(block) if line.startswith("*/5 * * * * ")]
    assert len(every_five) == 1 and "pitr-status" in block[every_five[0]], printed.stdout
    block[every_five[0]] = "* * * * * " + block[every_five[0]][len("*/5 * * * * "):]

    installed_at = time.time()
    before = schedule.read_crontab()
    schedule.write_crontab(schedule.merged(before, block, env))
    cron_daemon.soon()
    log = home.backup_dir(env) / "cron.log"
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        done_line = f"OK env={env} stanza={STANZA}: "  # printed after the metrics are written
        while time.monotonic() < deadline and done_line not in _text(log):
            time.sleep(2)
        assert observation.exists(), f"cron did not run pitr-status within {WAIT_SECONDS} s: {_text(log)}"
    finally:
        schedule.remove(env)
        if not before and schedule.read_crontab() == []:
            subprocess.run(["crontab", "-r"], capture_output=True)
        gone = time.monotonic() + 60
        while jobs_of(env) and time.monotonic() < gone:
            time.sleep(1)
    text = _text(log)
    # other jobs of the block may have run too (the hourly status at minute 30)
    assert text.startswith("== ") and any(line.startswith("== ") and line.endswith(" pitr-status")
                                          for line in text.splitlines()), text
    assert f"OK env={env} stanza={STANZA}: " in text, text
    found = {key: value for key, value in samples(metrics_file).items() if key[1] == env}
    assert found[("pgrunbook_pitr_status_exit_code", env, None)] == 0
    assert found[("pgrunbook_pitr_status_timestamp_seconds", env, None)] >= installed_at
    assert f"# BEGIN pgrunbook {env}" not in "\n".join(schedule.read_crontab())


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
