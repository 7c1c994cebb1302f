"""Point-in-time recovery with pgBackRest, on the real engine, through the real CLI.

The DB container is made from the runbook's own files: the image is built from
examples/pitr/Dockerfile (on the kit's pgBackRest image, so no network is
needed) and the container takes its command, environment and volumes from the
``db`` service of examples/pitr/compose.yaml, with network_mode="none" and
unique names. The repository is a volume, encrypted as in pgbackrest.conf.

Skipped when the pgBackRest base image is absent (a laptop): build it with
``EXTRA_PACKAGES=pgbackrest ../shared/ci/postgres-image kit-postgres:15-pgbackrest``.
"""

from __future__ import annotations

import json
import re
import time

from helpers import PASSWORD, Cli, last_line, wait_for
from helpers.pitr import (
    CIPHER_PASS,
    RUN,
    STANZA,
    compose_service,
    exec_in,
    psql,
    remove_with_volumes,
    server_time,
    start_from_compose,
    worklog,
)


def test_setup_refuses_without_archive_mode_and_says_what_to_set(cli, pg):
    """The kit's ordinary test server (no archiving, no pgBackRest): nothing is done."""
    notified = cli.home / "notified.json"
    with open(cli.home / ".env.prod", "a", encoding="utf-8") as handle:
        handle.write(f"PITR_STANZA={STANZA}\nNOTIFY_COMMAND=tee {notified}\n")
    done = cli("pitr-setup", "--env=prod")
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("エラー: archive_mode=off です")
    assert f"-c archive_mode=on -c 'archive_command=pgbackrest --stanza={STANZA} archive-push %p'" in error
    record = json.loads((cli.backup_dir("prod") / "worklog.jsonl").read_text().splitlines()[-1])
    assert record["task"] == "pitr-setup" and record["result"] == "refused"
    message = json.loads(notified.read_text(encoding="utf-8"))
    assert message["task"] == "pitr-setup" and "archive_mode=off" in message["summary"]


def test_without_stanza_or_with_a_bad_type_nothing_runs(tmp_path):
    runner = Cli(tmp_path)
    runner.write_env("prod", DB_CONTAINER="no-such-container-pitr")
    done = runner("pitr-backup", "--env=prod")
    assert done.returncode == 2 and "PITR_STANZA が設定されていません" in done.stderr
    runner.write_env("prod", DB_CONTAINER="no-such-container-pitr", PITR_STANZA=STANZA)
    done = runner("pitr-backup", "--env=prod", "--type=incr")
    assert done.returncode == 2 and "--type=full か --type=diff" in done.stderr
    dry = runner("pitr-backup", "--env=prod", "--type=diff", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert ("docker exec -u postgres -e PGUSER=app no-such-container-pitr pgbackrest "
            f"--stanza={STANZA} --type=diff backup") in dry.stdout
    dry = runner("pitr-restore-scratch", "--env=prod", "--target-time=2026-01-28T01:15:00Z", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "'--target=2026-01-28 01:15:00.000000+00' --target-action=promote" in dry.stdout
    assert "--network none" in dry.stdout and ":ro " in dry.stdout
    assert not list(tmp_path.rglob("worklog.jsonl"))


def test_restore_to_a_time_keeps_exactly_the_rows_before_it(engine, home, live, backed_up):
    psql(live, "CREATE TABLE ledger (id int PRIMARY KEY, note text)")
    psql(live, "INSERT INTO ledger VALUES (1, 'before'), (2, 'before')")
    diff = home("pitr-backup", "--env=prod", "--type=diff")
    assert diff.returncode == 0, diff.stderr
    assert last_line(diff.stdout).endswith("D")
    psql(live, "INSERT INTO ledger VALUES (3, 'before')")
    time.sleep(1)
    target = server_time(live)
    time.sleep(1)
    psql(live, "INSERT INTO ledger VALUES (4, 'after'), (5, 'after')")
    psql(live, "DELETE FROM ledger WHERE id = 1")

    done = home("pitr-restore-scratch", "--env=prod", f"--target-time={target}")
    assert done.returncode == 0, done.stderr
    name = last_line(done.stdout)
    assert "public.ledger\t3 行" in done.stdout
    scratch = engine.containers.get(name)
    try:
        assert psql(scratch, "SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger") == "1,2,3"
        assert psql(scratch, "SHOW archive_mode") == "off"
        assert scratch.attrs["HostConfig"]["NetworkMode"] == "none"
        mounts = {m["Destination"]: m for m in scratch.attrs["Mounts"]}
        assert mounts["/var/lib/pgbackrest"]["RW"] is False
        assert mounts["/var/lib/postgresql/data"]["Name"] == f"{name}-data"
        assert "PGBACKREST_REPO1_CIPHER_PASS=" + CIPHER_PASS not in done.stdout + done.stderr
        # the live DB is as it was
        assert psql(live, "SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger") == "2,3,4,5"
        record = worklog(home)[-1]
        assert record["task"] == "pitr-restore-scratch" and record["result"] == "ok"
        assert record["backup_set"] == last_line(diff.stdout) and record["file"] == name
    finally:
        dropped = home("pitr-scratch-drop", "--env=prod", f"--name={name}")
    assert dropped.returncode == 0, dropped.stderr
    assert not engine.containers.list(all=True, filters={"name": name})
    assert not engine.volumes.list(filters={"name": f"{name}-data"})
    refused = home("pitr-scratch-drop", "--env=prod", f"--name={live.name}")
    assert refused.returncode == 1 and "PITR 検証用ではありません" in refused.stderr
    live.reload()
    assert live.status == "running"


def test_a_target_before_the_oldest_backup_leaves_nothing_behind(engine, home, live, backed_up):
    done = home("pitr-restore-scratch", "--env=prod", "--target-time=2020-01-01T00:00:00Z")
    assert done.returncode == 2, done.stderr
    assert "いちばん古いベースバックアップ" in done.stderr.strip().splitlines()[-1]
    assert not engine.containers.list(all=True, filters={"label": f"pgrunbook.pitr-source={live.name}"})
    assert not engine.volumes.list(filters={"label": f"pgrunbook.pitr-source={live.name}"})
    assert worklog(home)[-1]["result"] == "failed"


def test_status_is_ok_after_setup_and_backup(home, live, backed_up):
    done = home("pitr-status", "--env=prod")
    assert done.returncode == 0, done.stdout + done.stderr
    line = last_line(done.stdout)
    assert line.startswith(f"OK env=prod stanza={STANZA}: 最後にアーカイブした WAL "), line


def test_drill_compares_with_the_live_rows_as_of_the_target(engine, home, live, backed_up):
    psql(live, "CREATE TABLE votes (id int PRIMARY KEY)")
    psql(live, "INSERT INTO votes SELECT generate_series(1, 3)")
    time.sleep(10)  # the target: 6 s before the drill starts
    psql(live, "INSERT INTO votes VALUES (4), (5)")
    psql(live, "DELETE FROM votes WHERE id = 1")

    done = home("pitr-drill", "--env=prod", "--minutes=0.1")
    assert done.returncode == 0, done.stdout + done.stderr
    # restored 3 (as of the target), live now 4, live rows committed by then 2 (1 was deleted)
    assert "public.votes\t3\t4\t2\tOK" in done.stdout
    assert "訓練 OK" in done.stderr
    record = worklog(home)[-1]
    assert record["task"] == "pitr-drill" and record["result"] == "ok"
    assert record["lost_tables"] == [] and record["commit_times"] is True
    assert record["restore_seconds"] > 0 and record["recovery_seconds"] > 0
    assert not engine.containers.list(all=True, filters={"label": f"pgrunbook.pitr-source={live.name}"})


def test_status_fails_clearly_when_archiving_is_broken(engine, pitr_image, tmp_path):
    """The archive_command points at a repository path that does not exist."""
    command = [word.replace("archive-push", "--repo1-path=/nonexistent/repo archive-push")
               for word in compose_service()["command"]]
    container = start_from_compose(engine, pitr_image, f"pgrunbook-test-pitr-broken-{RUN}", command)
    try:
        psql(container, "CREATE TABLE t AS SELECT 1 AS x")
        psql(container, "SELECT pg_switch_wal()")
        wait_for(lambda: psql(container, "SELECT failed_count FROM pg_stat_archiver") != "0",
                 "a failed archive attempt", 60)
        runner = Cli(tmp_path)
        runner.write_env("prod", DB_CONTAINER=container.name, DB_PASSWORD=PASSWORD, PITR_STANZA=STANZA)
        done = runner("pitr-status", "--env=prod")
        assert done.returncode == 2, done.stdout + done.stderr
        line = last_line(done.stdout)
        assert line.startswith(f"CRITICAL env=prod stanza={STANZA}: WAL 0000000100000000000000"), line
        assert "のアーカイブが失敗しています" in line and "ERROR [" in line, line
        assert CIPHER_PASS not in done.stdout + done.stderr
    finally:
        remove_with_volumes(engine, container)


def test_a_hole_in_the_archived_wal_fails_clearly_and_leaves_nothing(engine, home, live, backed_up):
    """A WAL segment lost from the repository (after the newest base backup): the
    copy cannot reach the target. Last in this file: it damages the repository."""
    segment = psql(live, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    psql(live, "CREATE TABLE hole (id int)")
    psql(live, "INSERT INTO hole VALUES (1)")
    psql(live, "SELECT pg_switch_wal()")
    wait_for(lambda: psql(live, "SELECT last_archived_wal FROM pg_stat_archiver") >= segment,
             "the segment to be archived", 60)
    time.sleep(1)
    target = server_time(live)
    psql(live, "INSERT INTO hole VALUES (2)")
    code, output = exec_in(live, ["find", "/var/lib/pgbackrest/archive", "-name", f"{segment}-*",
                                  "-print", "-delete"], user="postgres")
    assert code == 0 and segment in output, output

    done = home("pitr-restore-scratch", "--env=prod", f"--target-time={target}")
    assert done.returncode == 1, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("エラー: 検証用コンテナで PostgreSQL のリカバリが失敗しました: "), error
    assert "recovery target" in error and "→ リポジトリの WAL が対象時刻まで届いていません" in error, error
    assert not engine.containers.list(all=True, filters={"label": f"pgrunbook.pitr-source={live.name}"})
    assert not engine.volumes.list(filters={"label": f"pgrunbook.pitr-source={live.name}"})
    assert worklog(home)[-1]["result"] == "failed"


def test_lost_pgbackrest_outputs_are_read_again_or_from_the_repository(home, live, backed_up, lost_outputs):
    """The engine loses pgBackRest's output (framing.py): ``info`` is asked again, never read
    as "no base backups"; a backup whose log was lost takes its label from the repository."""
    lost = lost_outputs
    done = home("pitr-status", "--env=prod", env=lost.env(match="^pgbackrest .* info$", nth="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert last_line(done.stdout).startswith("OK "), done.stdout
    assert len(lost.dropped()) == 1
    done = home("pitr-backup", "--env=prod", "--type=diff",
                env=lost.env(match="^pgbackrest .* backup$", nth="1"))
    assert done.returncode == 0, done.stderr
    label = last_line(done.stdout)
    assert re.fullmatch(r"\d{8}-\d{6}F_\d{8}-\d{6}D", label), done.stdout + done.stderr
    assert "リポジトリの一覧で新しいバックアップを確かめます" in done.stderr
    assert len(lost.dropped()) == 2
