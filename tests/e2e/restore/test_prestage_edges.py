"""RESTORE_PRESTAGE: defects found in review (each test failed before its fix)."""

from __future__ import annotations

import uuid

import pytest

from helpers import (
    PASSWORD,
    VERBOSE,
    allows_connections,
    backup,
    comment_of,
    databases,
    owners,
    paused,
    prestaged,
    restore_test,
    role,
    small_disk,
    start_postgres,
    table_fingerprints,
)


def owners_of_closed(pg, database: str) -> set[str]:
    """The owners of a closed database's tables (opened for the look, closed again)."""
    pg.psql(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true', "postgres")
    try:
        return owners(pg, database)
    finally:
        pg.psql(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false', "postgres")


@pytest.fixture(scope="module")
def pg(docker_engine):
    """A server of this module's own (the replace tests change roles and owners)."""
    server = start_postgres(docker_engine, f"pgrunbook-test-prestage-review-{uuid.uuid4().hex[:6]}")
    yield server
    server.container.remove(force=True, v=True)


@pytest.fixture
def prod(cli, pg):
    name = f"live_{uuid.uuid4().hex[:8]}"
    pg.create_database(name, sample=True)
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=name, DB_PASSWORD=PASSWORD, RESTORE_PRESTAGE="true")
    yield name
    for db in databases(pg):
        if db.startswith(name):
            pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', "postgres")


def test_a_restore_test_run_in_another_time_zone_still_replaces_the_older_prestaged_database(cli, pg, prod):
    """The marks carry local time with its offset: compared as text, a restore test run
    under TZ=UTC after one under TZ=Asia/Tokyo looked older and kept both copies."""
    backup(cli, "--env=prod")
    cli("verify", "--env=prod", "--restore-test", env={**VERBOSE, "TZ": "Asia/Tokyo"})
    [old] = prestaged(pg, prod)
    newest = backup(cli, "--env=prod")
    restore_test(cli)  # TZ of the machine (UTC here): "…T08:…+00:00" < "…T17:…+09:00" as text
    [kept] = prestaged(pg, prod)
    assert kept != old and f"file={newest.name}" in comment_of(pg, kept)
    checked = cli("check", "--env=prod")
    assert any("事前展開" in line and "OK" in line and newest.name in line
               for line in checked.stdout.splitlines()), checked.stdout


def test_without_row_counts_a_prestaged_database_changed_behind_its_mark_is_not_swapped_in(cli, pg, prod):
    """ROW_COUNTS=false: the manifest has no counts to compare, but the mark has the row
    total the restore test counted; a database opened, changed and closed again must not
    become the live database."""
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=prod, DB_PASSWORD=PASSWORD,
                  RESTORE_PRESTAGE="true", ROW_COUNTS="false")
    dump = backup(cli, "--env=prod")
    wanted = table_fingerprints(pg, prod)
    restore_test(cli)
    [kept] = prestaged(pg, prod)
    pg.psql(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true', "postgres")
    pg.psql("DELETE FROM public.votes WHERE id IN (SELECT min(id) FROM public.votes)", kept)
    pg.psql(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS false', "postgres")
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=VERBOSE)
    assert replaced.returncode == 0, replaced.stderr
    assert "記録と一致しません" in replaced.stderr and "pg_restore" in replaced.stderr, replaced.stderr
    assert table_fingerprints(pg, prod) == wanted
    assert allows_connections(pg, prod) == "t"


def test_a_refused_replace_that_changed_owners_in_the_prestaged_database_does_not_put_it_back(cli, pg, prod):
    """A --no-owner backup: the replace copies the live owners into the claimed database,
    then refuses (a grant made after the backup). Put back under its original mark, that
    database was later taken by --ownership=restorer, whose objects must be DB_USER's."""
    owner = role(pg, f"owner_{uuid.uuid4().hex[:6]}")
    pg.psql(f"""DO $$DECLARE t record; BEGIN
        FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
          EXECUTE format('ALTER TABLE public.%I OWNER TO "{owner}"', t.tablename);
        END LOOP; END$$""", prod)
    dump = backup(cli, "--env=prod", "--no-owner")
    wanted = table_fingerprints(pg, prod)
    restore_test(cli)
    [kept] = prestaged(pg, prod)
    assert owners_of_closed(pg, kept) == {"app"}  # restored --no-owner: all DB_USER's
    reader = role(pg, f"reader_{uuid.uuid4().hex[:6]}")
    pg.psql(f'GRANT SELECT ON public.votes TO "{reader}"', prod)  # granted after the backup
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=VERBOSE)
    assert refused.returncode == 1 and reader in refused.stderr, refused.stderr
    for name in prestaged(pg, prod):  # whatever is kept is as the restore test left it
        assert owners_of_closed(pg, name) == {"app"}, refused.stderr
    restorer = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                   "--ownership=restorer", "--accept-privilege-changes", env=VERBOSE)
    assert restorer.returncode == 0, restorer.stderr
    assert owners(pg, prod) == {"app"}, restorer.stderr
    assert table_fingerprints(pg, prod) == wanted


def test_a_replace_from_a_file_that_does_not_fit_beside_the_prestaged_database_names_it(cli, docker_engine):
    """Live + prestaged fill the disk: a replace of an older backup cannot restore beside
    them. At 2 a.m. the refusal must name the prestaged database that takes the space."""
    with small_disk(cli, docker_engine, "prestage-review-disk") as server:
        older = backup(cli, "--env=prod")
        backup(cli, "--env=prod")
        restore_test(cli)
        [kept] = prestaged(server, "big")
        server.psql("CHECKPOINT", "postgres")
        wanted = table_fingerprints(server, "big")
        refused = cli("restore-replace", "--env=prod", f"--file={older}", "--confirm=prod", "--jobs=1",
                      env=VERBOSE)
        assert refused.returncode == 1 and "空きが足りません" in refused.stderr, refused.stderr
        assert f"--db={kept}" in refused.stderr, refused.stderr
        assert prestaged(server, "big") == [kept] and table_fingerprints(server, "big") == wanted
        assert not [d for d in databases(server) if "_staging_" in d]
        assert "途中で止まって" not in cli("restore-list", "--env=prod").stderr  # no journal left


def test_restore_list_does_not_call_an_opened_prestaged_database_closed(cli, pg, prod):
    backup(cli, "--env=prod")
    restore_test(cli)
    [kept] = prestaged(pg, prod)
    assert "接続不可で保管" in cli("restore-list", "--env=prod").stdout
    pg.psql(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true', "postgres")
    listed = cli("restore-list", "--env=prod").stdout
    [line] = [line for line in listed.splitlines() if line.startswith(kept)]
    assert "接続不可" not in line and "使いません" in line, line


def test_check_names_a_second_prestaged_database_left_by_an_interrupted_restore_test(cli, pg, prod):
    """A restore test killed between marking the new database and dropping the one it
    replaces leaves two full copies: check must not show only the newest."""
    backup(cli, "--env=prod")
    restore_test(cli)
    [kept] = prestaged(pg, prod)
    older = kept.replace("_prestaged_", "_prestaged_0")  # what the killed run had replaced
    mark = comment_of(pg, kept)
    stamp = mark.split(":", 3)[3][:25]
    pg.psql(f'CREATE DATABASE "{older}" TEMPLATE "{kept}"', "postgres")
    pg.psql(f"""COMMENT ON DATABASE "{older}" IS '{mark.replace(stamp, "2026-01-01T02:30:00+00:00")}';
               ALTER DATABASE "{older}" WITH ALLOW_CONNECTIONS false""", "postgres")
    checked = cli("check", "--env=prod")
    assert any("事前展開" in line and "WARN" in line and older in line and "restore-drop" in line
               for line in checked.stdout.splitlines()), checked.stdout
    assert any("事前展開" in line and "OK" in line and kept in line for line in checked.stdout.splitlines())


def test_a_prestaged_database_dropped_right_after_its_claim_is_restored_from_the_file(cli, pg, prod, tmp_path):
    """The claim's next read (its settings and its rows' statistics, one exec) meets no
    database: the replace falls back to the settings alone, which say it is gone, and
    restores the file instead of failing."""
    dump = backup(cli, "--env=prod")
    wanted = table_fingerprints(pg, prod)
    restore_test(cli)
    [kept] = prestaged(pg, prod)
    with paused(cli, "prestaged-claimed", tmp_path, "restore-replace", "--env=prod", f"--file={dump}",
                "--confirm=prod") as run:
        run.reached("the prestaged database claimed")
        pg.psql(f'DROP DATABASE "{kept}" WITH (FORCE)', "postgres")
        replaced = run.go()
    assert replaced.returncode == 0, replaced.stderr
    assert f"事前展開 DB {kept} がなくなりました: ファイルから復元します" in replaced.stderr
    assert table_fingerprints(pg, prod) == wanted
    assert not prestaged(pg, prod) and allows_connections(pg, prod) == "t"
