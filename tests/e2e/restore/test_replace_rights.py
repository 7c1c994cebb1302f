"""A replace by a DB_USER that is not a superuser, with the rights the runbook
documents: CREATEDB, membership of the role that owns the database and its
tables, and pg_signal_backend. It succeeds on every version; what such a user
cannot end (a superuser's session) is waited out before any app stops, or the
replace is refused then, and the restored database is kept for the retry."""

from __future__ import annotations

import json
import uuid

import pytest

from helpers import (
    MATRIX,
    allows_connections,
    backup,
    databases,
    log_lines,
    minimal_rights,
    one_clean_line,
    paused,
    prestaged,
    start_postgres,
    table_fingerprints,
    wait_for,
)


def table_owners(pg, database: str) -> set[str]:
    return set(pg.psql("SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'accounting', 'audit') "
                       "AND c.relkind IN ('r', 'v', 'S')",
                       database).split())


@pytest.mark.matrix
def test_a_replace_and_its_rollback_by_a_non_superuser_with_the_documented_rights_succeed(cli, pg, target):
    owner, _kit = minimal_rights(cli, pg, target)
    dump = backup(cli, "--env=prod")
    old = table_fingerprints(pg, target)
    pg.psql("INSERT INTO public.votes (topic, member_id, choice, cast_at) VALUES ('後から', 1, '賛成', now())",
            target)
    written = table_fingerprints(pg, target)
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert result.returncode == 0, result.stderr
    for expected in (old, written):  # replaced, then rolled back by the same user
        assert table_fingerprints(pg, target) == expected
        assert table_owners(pg, target) == {owner}
        assert pg.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{target}'",
                       "postgres").strip() == owner
        if expected is old:
            [previous] = [d for d in databases(pg) if d.startswith(target + "_pgrunbook_previous_")]
            back = cli("restore-rollback", "--env=prod", f"--previous={previous}", "--confirm=prod")
            assert back.returncode == 0, back.stderr


# PostgreSQL 16+ grants membership with a SET option: the images of the matrix from 16 on
WITH_SET_OPTION = [image for image in MATRIX
                   if image.rsplit(":", 1)[-1].isdigit() and int(image.rsplit(":", 1)[-1]) >= 16]


@pytest.mark.parametrize("pg", WITH_SET_OPTION, indirect=True, ids=WITH_SET_OPTION)
def test_a_member_of_the_owner_without_the_set_option_is_refused_with_the_grant_before_anything_is_made(
        cli, pg, target):
    owner, kit = minimal_rights(cli, pg, target)
    pg.psql(f'REVOKE "{owner}" FROM "{kit}"', "postgres")
    pg.psql(f'GRANT "{owner}" TO "{kit}" WITH INHERIT TRUE, SET FALSE', "postgres")
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    line = one_clean_line(refused)
    assert f"GRANT {owner} TO {kit} WITH SET TRUE" in line and "SET ROLE" in line, line
    assert table_fingerprints(pg, target) == before
    assert [d for d in databases(pg) if d.startswith(target)] == [target, target + "_dev"]
    checked = cli("check", "--env=prod")  # the check names the same grant beforehand
    assert f"GRANT {owner} TO {kit} WITH SET TRUE" in checked.stdout, checked.stdout


def superuser_session(pg, database: str) -> str:
    """An idle superuser psql on ``database`` (a DBA's), connected before this returns."""
    name = pg.run_detached("SELECT pg_sleep(600)", database)
    wait_for(lambda: pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'",
                             "postgres").strip() == "1", "the superuser session")
    return name


def end_session(pg, name: str) -> None:
    pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'",
            "postgres")


def test_a_superuser_session_that_stays_is_refused_before_the_apps_stop_and_staging_is_kept(
        cli, pg, target, app_container):
    minimal_rights(cli, pg, target, APP_CONTAINERS=app_container.name, REPLACE_SESSION_WAIT="2s")
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    app_container.reload()
    started = app_container.attrs["State"]["StartedAt"]
    dba = superuser_session(pg, target)
    try:
        refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
        assert refused.returncode == 1, refused.stderr
        assert dba in refused.stderr and "superuser" in refused.stderr, refused.stderr
        app_container.reload()
        assert app_container.status == "running" and app_container.attrs["State"]["StartedAt"] == started
        assert not [line for line in log_lines(cli) if line.get("result") == "started"]
        assert table_fingerprints(pg, target) == before and allows_connections(pg, target) == "t"
        [kept] = prestaged(pg, target)  # the restored database, closed, for the retry
        assert allows_connections(pg, kept) == "f"
        assert not (cli.backup_dir("prod") / ".restore-in-progress.json").exists()
    finally:
        end_session(pg, dba)
    retried = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env={"PGRUNBOOK_VERBOSE": "1"})
    assert retried.returncode == 0, retried.stderr
    assert f"事前展開 DB {kept} を使います" in retried.stderr, retried.stderr
    assert table_fingerprints(pg, target) == before


def test_a_superuser_session_that_ends_while_the_replace_waits_is_waited_out(cli, pg, target, tmp_path):
    minimal_rights(cli, pg, target, REPLACE_SESSION_WAIT="10m")
    dump = backup(cli, "--env=prod")
    dba = superuser_session(pg, target)
    try:
        with paused(cli, "sessions-wait", tmp_path, "restore-replace", "--env=prod", f"--file={dump}",
                    "--confirm=prod") as run:
            run.reached("the replace waiting for the superuser session (checked once, found it)")
            end_session(pg, dba)
            done = run.go()
        assert done.returncode == 0, done.stderr
        assert dba in done.stderr  # named while it was waited for
    finally:
        end_session(pg, dba)


def test_a_superuser_session_that_comes_after_the_apps_stopped_reopens_live_at_once(
        cli, pg, target, app_container, tmp_path):
    """It connects between the wait and the close: the swap cannot end it, so live is
    reopened without a retry, the apps start again, and the restored DB is kept."""
    minimal_rights(cli, pg, target, APP_CONTAINERS=app_container.name)
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    with paused(cli, "swap", tmp_path, "restore-replace", "--env=prod", f"--file={dump}",
                "--confirm=prod") as run:
        run.reached("the apps stopped, the swap next")
        dba = superuser_session(pg, target)
        try:
            done = run.go()
        finally:
            end_session(pg, dba)
    assert done.returncode == 1, done.stderr
    assert "すぐ開き直しました" in done.stderr and dba in done.stderr, done.stderr
    assert table_fingerprints(pg, target) == before and allows_connections(pg, target) == "t"
    app_container.reload()
    assert app_container.status == "running"
    [kept] = prestaged(pg, target)
    assert kept in done.stderr
    assert not (cli.backup_dir("prod") / ".restore-in-progress.json").exists()


@pytest.fixture(scope="module")
def slow_autovacuum(docker_engine):
    """A server whose autovacuum starts within a second and then crawls (one page per
    100 ms): a freshly restored database has a worker on it for minutes."""
    server = start_postgres(docker_engine, f"pgrunbook-test-autovac-{uuid.uuid4().hex[:8]}",
                            command=["postgres", "-c", "autovacuum_naptime=1", "-c",
                                     "autovacuum_vacuum_cost_delay=100", "-c", "autovacuum_vacuum_cost_limit=1",
                                     "-c", "autovacuum_analyze_threshold=0", "-c",
                                     "autovacuum_analyze_scale_factor=0"])
    yield server
    server.container.remove(force=True, v=True)


def test_an_autovacuum_worker_on_staging_does_not_stop_a_non_superusers_swap(tmp_path, slow_autovacuum):
    from helpers import Cli

    pg = slow_autovacuum
    cli = Cli(tmp_path)
    pg.create_database("live", sample=True)
    pg.psql("CREATE TABLE public.filler AS SELECT g AS id, repeat(md5(g::text), 4) AS payload "
            "FROM generate_series(1, 40000) AS g", "live")
    minimal_rights(cli, pg, "live")
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, "live")
    with paused(cli, "apps-stop", tmp_path, "restore-replace", "--env=prod", f"--file={dump}",
                "--confirm=prod") as run:
        run.reached("the replace before the swap")
        [staging] = [d for d in databases(pg) if d.startswith("live_pgrunbook_staging_")]
        wait_for(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                                 f"AND datname = '{staging}'", "postgres").strip() != "0",
                 "an autovacuum worker on the staging database", 120)
        done = run.go()
    assert done.returncode == 0, done.stderr
    assert table_fingerprints(pg, "live") == before
    record = [line for line in log_lines(cli) if line["task"] == "restore-replace"][-1]
    assert record["result"] == "ok", json.dumps(record, ensure_ascii=False)
