"""Interruptions on the real engine: kill -9 at every stage of a replace, prepared
transactions, and the one command that puts an env right afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from helpers import (
    PASSWORD,
    ROOT,
    allows_connections,
    assert_clean_env,
    backup,
    databases,
    last_line,
    log_lines,
    process_state,
    replace_scenario,
    start_postgres,
    table_fingerprints,
    uploads,
    wait_for,
    wait_for_kit_processes_to_end,
)

STAGES = ["upload", "staging-restore", "checks", "apps-stopped", "swap"]


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_at_each_stage_then_one_command_repairs(cli, pg, target, app_container, stage):
    dump, old, live = replace_scenario(cli, pg, target, app_container)
    killed = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", "--jobs=2",
                 env={"PGRUNBOOK_TEST_KILL_AT": stage})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    wait_for_kit_processes_to_end(pg)

    # every later task of the env says what was left and how to repair it
    noticed = cli("list", "--env=prod")
    assert "restore-recover --env=prod" in noticed.stderr, noticed.stderr
    assert (cli.backup_dir("prod") / ".restore-in-progress.json").exists()
    started = [r for r in log_lines(cli) if r["task"] == "restore-replace"]
    if stage in ("apps-stopped", "swap"):  # the "started" line is written before the irreversible step
        assert started and started[-1]["result"] == "started"
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert refused.returncode == 1 and "restore-recover" in refused.stderr

    repaired = cli("restore-recover", "--env=prod", "--confirm=prod")
    assert repaired.returncode == 0, repaired.stderr
    # never neither: the live database serves the old data or the new, and is open
    assert_clean_env(cli, pg, target, app_container, (old, live))
    assert [r for r in log_lines(cli) if r["task"] == "restore-recover"][-1]["result"] == "ok"

    again = cli("restore-recover", "--env=prod", "--confirm=prod")
    assert again.returncode == 0 and "修復が必要なものはありません" in again.stderr
    clean = cli("list", "--env=prod")
    assert "restore-recover" not in clean.stderr
    # and the env works again
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert replaced.returncode == 0, replaced.stderr
    assert table_fingerprints(pg, target) == old


@pytest.mark.parametrize("stage", ["upload", "staging-restore"])
def test_kill_9_of_a_single_job_restore_leaves_its_uploaded_archive_to_recover(
        cli, pg, target, app_container, stage):
    """-j 1 restores from the archive placed in the container (issue 24: the stream through
    the exec's stdin was slower), so a kill -9 there leaves the upload, which the journal
    names and restore-recover removes like a -j 2 run's."""
    dump, old, live = replace_scenario(cli, pg, target, app_container)
    killed = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", "--jobs=1",
                 env={"PGRUNBOOK_TEST_KILL_AT": stage})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    wait_for_kit_processes_to_end(pg)
    record = json.loads((cli.backup_dir("prod") / ".restore-in-progress.json").read_text())
    assert record["upload"] and uploads(pg), (record, uploads(pg))
    repaired = cli("restore-recover", "--env=prod", "--confirm=prod")
    assert repaired.returncode == 0, repaired.stderr
    assert_clean_env(cli, pg, target, app_container, (old, live))


def test_recover_without_a_terminal_needs_confirm_and_dry_run_shows_manual_commands(cli, pg, target):
    pg.psql(f'ALTER DATABASE "{target}" WITH ALLOW_CONNECTIONS false', "postgres")
    try:
        failed = cli("backup", "--env=prod")  # names the state and the repair, not a dead server
        assert failed.returncode == 1
        assert "接続を受け付けない" in failed.stderr and "restore-recover --env=prod" in failed.stderr
        dry = cli("restore-recover", "--env=prod", "--dry-run")
        assert dry.returncode == 0 and f'ALTER DATABASE "{target}" WITH ALLOW_CONNECTIONS true' in dry.stdout
        assert allows_connections(pg, target) == "f"
        refused = cli("restore-recover", "--env=prod")
        assert refused.returncode == 1 and "--confirm=prod" in refused.stderr
        fixed = cli("restore-recover", "--env=prod", "--confirm=prod")
        assert fixed.returncode == 0, fixed.stderr
        assert allows_connections(pg, target) == "t"
    finally:
        pg.psql(f'ALTER DATABASE "{target}" WITH ALLOW_CONNECTIONS true', "postgres")


@pytest.fixture(scope="module")
def special_pg(docker_engine):
    """A server with prepared transactions and logical decoding enabled; its log shows every
    DDL statement (what a run did, observed rather than timed)."""
    server = start_postgres(docker_engine, f"pgrunbook-test-special-{uuid.uuid4().hex[:8]}",
                            command=["postgres", "-c", "max_prepared_transactions=10",
                                     "-c", "wal_level=logical", "-c", "log_statement=ddl"])
    yield server
    server.container.remove(force=True, v=True)


def test_prepared_transaction_is_refused_before_anything_is_closed(tmp_path, special_pg):
    from helpers import Cli

    cli = Cli(tmp_path)
    special_pg.create_database("live", sample=True)
    cli.write_env("prod", DB_CONTAINER=special_pg.name, DB_NAME="live", DB_PASSWORD=PASSWORD)
    dump = backup(cli, "--env=prod")
    special_pg.psql("BEGIN; INSERT INTO public.votes (topic, member_id, choice, cast_at) VALUES "
                    "('保留', 1, '賛成', now()); PREPARE TRANSACTION 'knot-tx-1';", "live")
    try:
        before = table_fingerprints(special_pg, "live")
        since = time.time()  # (to the microsecond: the test's own CREATE DATABASE was just before)
        refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
        assert refused.returncode == 1
        assert "準備済みトランザクション" in refused.stderr and "ROLLBACK PREPARED" in refused.stderr
        # refused by the preflight: no staging database was created, so no swap was tried (and no
        # retries on a closed database): the server's own log of DDL statements says so
        statements = special_pg.container.logs(since=since).decode("utf-8", "replace")
        assert "CREATE DATABASE" not in statements and "ALLOW_CONNECTIONS" not in statements, statements
        assert allows_connections(special_pg, "live") == "t"
        assert not [d for d in databases(special_pg) if "_staging_" in d]  # refused before restoring
        assert table_fingerprints(special_pg, "live") == before
    finally:
        special_pg.psql("ROLLBACK PREPARED 'knot-tx-1'", "live")


def test_prepared_transaction_that_appears_during_the_restore_stops_the_swap_not_the_app(
        tmp_path, special_pg):
    """The swap script checks again right before closing: the live DB is never closed for it."""
    from helpers import Cli

    cli = Cli(tmp_path)
    special_pg.create_database("live2", sample=True)
    cli.write_env("prod", DB_CONTAINER=special_pg.name, DB_NAME="live2", DB_PASSWORD=PASSWORD)
    dump = backup(cli, "--env=prod")
    # the run stops itself (SIGSTOP) when the staging restore is checked and the apps are
    # stopped, right before the swap: the transaction is prepared then, for certain
    environment = dict(os.environ, PGRUNBOOK_HOME=str(tmp_path), PGRUNBOOK_TEST_KILL_AT="apps-stopped",
                       PGRUNBOOK_TEST_KILL_SIGNAL="STOP")
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "restore-replace", "--env=prod",
         f"--file={dump}", "--confirm=prod"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=tmp_path)
    wait_for(lambda: process_state(process.pid) == "T", "the replace stopped before its swap", 120)
    special_pg.psql("BEGIN; DELETE FROM public.votes WHERE false; PREPARE TRANSACTION 'late-tx';", "live2")
    process.send_signal(signal.SIGCONT)
    try:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 1, stdout + stderr
        assert "準備済みトランザクション" in stderr, stderr
        assert allows_connections(special_pg, "live2") == "t"
        assert not [d for d in databases(special_pg) if "_staging_" in d]
    finally:
        special_pg.psql("ROLLBACK PREPARED 'late-tx'", "live2")


def test_prepared_transaction_that_appears_as_the_swap_closes_live_reopens_it_at_once(tmp_path, special_pg):
    """An app session prepares a transaction just after the swap script closed the live
    DB (the test's hook runs there and waits until it exists). No retry can end it: the
    script reopens the DB at once, the run is refused as the preflight refuses, and the
    restored database is kept, so the retry after ROLLBACK PREPARED only swaps."""
    from helpers import Cli, prestaged, wait_for

    cli = Cli(tmp_path)
    special_pg.create_database("live5", sample=True)
    cli.write_env("prod", DB_CONTAINER=special_pg.name, DB_NAME="live5", DB_PASSWORD=PASSWORD)
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(special_pg, "live5")
    script = f"/tmp/late-{uuid.uuid4().hex[:8]}.sql"
    special_pg.exec(["sh", "-c", f"echo 'BEGIN; DELETE FROM public.votes WHERE false;' > {script}"])
    app = f"late-app-{uuid.uuid4().hex[:6]}"
    exec_id = special_pg.client.api.exec_create(
        special_pg.container.id, ["sh", "-c", f"timeout 300 tail -f {script} | psql -X -U app -d live5"],
        environment={"PGPASSWORD": PASSWORD, "PGAPPNAME": app})["Id"]
    special_pg.client.api.exec_start(exec_id, detach=True)
    wait_for(lambda: special_pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                     f"'{app}' AND state = 'idle in transaction'", "postgres").strip() == "1",
             "the app's open transaction")
    hook = (f"echo \"PREPARE TRANSACTION 'late-close';\" >> {script}; n=0; "
            "until [ \"$(psql -X -A -t -d postgres -c \"SELECT count(*) FROM pg_prepared_xacts "
            "WHERE gid = 'late-close'\")\" = 1 ] || [ $n -gt 600 ]; do n=$((n+1)); sleep 0.1; done")
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                 env={"PGRUNBOOK_TEST_AFTER_CLOSE": hook})
    try:
        assert result.returncode == 1, result.stderr
        assert "準備済みトランザクション" in result.stderr and "開き直しました" in result.stderr, result.stderr
        assert "ROLLBACK PREPARED" in result.stderr and "Traceback" not in result.stderr
        assert allows_connections(special_pg, "live5") == "t"
        [kept] = prestaged(special_pg, "live5")
        assert kept in result.stderr and allows_connections(special_pg, kept) == "f"
        assert not (cli.backup_dir("prod") / ".restore-in-progress.json").exists()
    finally:
        special_pg.psql("ROLLBACK PREPARED 'late-close'", "live5")
    assert table_fingerprints(special_pg, "live5") == before
    retried = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                  env={"PGRUNBOOK_VERBOSE": "1"})
    assert retried.returncode == 0, retried.stderr
    assert f"事前展開 DB {kept} を使います" in retried.stderr, retried.stderr


def test_logical_slot_is_named_before_the_swap_and_before_the_drop(tmp_path, special_pg):
    from helpers import Cli

    cli = Cli(tmp_path)
    special_pg.create_database("live3", sample=True)
    cli.write_env("prod", DB_CONTAINER=special_pg.name, DB_NAME="live3", DB_PASSWORD=PASSWORD)
    dump = backup(cli, "--env=prod")
    special_pg.psql("SELECT pg_create_logical_replication_slot('knot_cdc', 'pgoutput')", "live3")
    try:
        result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
        assert result.returncode == 0, result.stderr
        assert "knot_cdc" in result.stderr and "pg_drop_replication_slot" in result.stderr
        previous = last_line(result.stdout)
        dropped = cli("restore-drop", "--env=prod", f"--db={previous}", "--confirm=prod")
        assert dropped.returncode == 1 and "knot_cdc" in dropped.stderr
        assert previous in databases(special_pg)
    finally:
        special_pg.psql("SELECT pg_drop_replication_slot('knot_cdc')", "postgres")


def test_journal_of_a_live_run_is_not_called_interrupted(cli, pg, target):
    record = {"task": "restore-replace", "pid": os.getpid(), "host": os.uname().nodename,
              "stage": "staging-restore", "apps_stopped": []}
    folder = cli.backup_dir("prod")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".restore-in-progress.json").write_text(json.dumps(record))
    listing = cli("list", "--env=prod")
    assert "restore-recover" not in listing.stderr  # this test process is alive
    record["pid"] = 2 ** 22 + 12345  # no such process
    (folder / ".restore-in-progress.json").write_text(json.dumps(record))
    listing = cli("list", "--env=prod")
    assert "restore-recover --env=prod" in listing.stderr


def test_an_idle_staging_database_of_another_hosts_run_is_named_not_dropped(cli, pg, target):
    """Between its restore and its swap another host's replace holds no session on its
    staging DB; this host's journal does not name it. Dropping it would fail that run's
    swap: recover names it with the manual command instead. This host's own leftovers
    (an idle staging DB with its host in the mark) are still dropped."""
    other = f"{target}_pgrunbook_staging_20260101020000"
    mine = f"{target}_pgrunbook_staging_20260101020001"
    when = "2026-01-01T02:00:00+09:00"
    pg.psql(f'CREATE DATABASE "{other}"', "postgres")
    pg.psql(f"COMMENT ON DATABASE \"{other}\" IS 'pgrunbook:staging:prod:{when}:ops@db-admin-2:x.dump'",
            "postgres")
    pg.psql(f'CREATE DATABASE "{mine}"', "postgres")
    pg.psql(f"COMMENT ON DATABASE \"{mine}\" IS 'pgrunbook:staging:prod:{when}:ops@{socket.gethostname()}:"
            "x.dump'", "postgres")
    repaired = cli("restore-recover", "--env=prod", "--confirm=prod")
    assert repaired.returncode == 0, repaired.stderr
    assert other in databases(pg) and mine not in databases(pg)
    assert "db-admin-2" in repaired.stderr and "DROP DATABASE" in repaired.stderr, repaired.stderr
