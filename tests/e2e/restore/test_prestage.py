"""RESTORE_PRESTAGE (issue 14, deliverable 7): the restore test keeps the newest
backup restored and closed; restore-replace of that file only checks and swaps."""

from __future__ import annotations

import signal
import uuid

import pytest

from helpers import (
    DATA,
    PASSWORD,
    VERBOSE,
    add_vote,
    allows_connections,
    assert_clean_env,
    backup,
    comment_of,
    databases,
    log_lines,
    prestaged,
    restore_test,
    role,
    small_disk,
    table_fingerprints,
    wait_for_kit_processes_to_end,
)


@pytest.fixture
def prod(cli, pg, target):
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_PASSWORD=PASSWORD,
                  RESTORE_PRESTAGE="true")
    return target


def test_the_restore_test_prestages_the_newest_backup_and_the_replace_only_swaps(cli, pg, prod):
    first = backup(cli, "--env=prod")
    restore_test(cli)
    add_vote(pg, prod)
    dump = backup(cli, "--env=prod")
    wanted = table_fingerprints(pg, prod)
    tested = restore_test(cli)
    assert "事前展開 DB" in tested.stderr + tested.stdout
    # one prestaged database: the newest backup's, closed, marked with its file and sha256
    [kept] = prestaged(pg, prod)
    assert allows_connections(pg, kept) == "f"
    sha256 = dump.with_name(dump.name + ".sha256").read_text().split()[0]
    mark = comment_of(pg, kept)
    assert f"file={dump.name}" in mark and f"sha256={sha256}" in mark and first.name not in mark
    listed = cli("restore-list", "--env=prod")
    assert f"事前展開: {dump.name}" in listed.stdout
    backups = {line.split("\t")[0]: line.split("\t") for line in cli("list", "--env=prod").stdout.splitlines()}
    assert backups[dump.name][-1] == kept and backups[first.name][-1] == "-"
    checked = cli("check", "--env=prod")
    assert any("事前展開" in line and "OK" in line and dump.name in line
               for line in checked.stdout.splitlines()), checked.stdout

    add_vote(pg, prod)  # the live DB moves on after the backup
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=VERBOSE)
    assert replaced.returncode == 0, replaced.stderr
    assert f"事前展開 DB {kept} を使います" in replaced.stderr, replaced.stderr
    assert "pg_restore" not in replaced.stderr  # no restore: only the checks and the swap
    assert table_fingerprints(pg, prod) == wanted
    assert allows_connections(pg, prod) == "t"
    assert not prestaged(pg, prod)  # it became the live database
    entry = [r for r in log_lines(cli) if r["task"] == "restore-replace"][-1]
    assert entry["result"] == "ok" and entry["prestaged"] == kept and entry["sha256"] == sha256
    # the way back is the same as after any replace
    rolled = cli("restore-rollback", "--env=prod", f"--previous={entry['previous']}",
                 "--confirm=prod", env=VERBOSE)
    assert rolled.returncode == 0, rolled.stderr


def test_only_the_newest_backup_is_prestaged_and_no_prestaged_restores_from_the_file(cli, pg, prod):
    older = backup(cli, "--env=prod")
    backup(cli, "--env=prod")
    tested = restore_test(cli, f"--file={older}")
    assert "事前展開はしません（この環境の最新のバックアップではない）" in tested.stderr
    assert not prestaged(pg, prod)
    restore_test(cli)
    assert len(prestaged(pg, prod)) == 1
    checked = cli("check", "--env=prod")
    assert "事前展開" in checked.stdout
    newest = backup(cli, "--env=prod")  # the prestaged one is no longer the newest
    stale = cli("check", "--env=prod")
    assert any("事前展開" in line and "WARN" in line and newest.name in line
               for line in stale.stdout.splitlines()), stale.stdout
    # a replace of the newest says which file would have been a swap only
    [kept] = prestaged(pg, prod)
    replaced = cli("restore-replace", "--env=prod", f"--file={newest}", "--confirm=prod", env=VERBOSE)
    assert replaced.returncode == 0, replaced.stderr
    assert "事前展開 DB は knot-prod-" in replaced.stderr and "pg_restore" in replaced.stderr
    assert prestaged(pg, prod) == [kept]


def test_a_prestaged_database_that_was_opened_or_changed_is_not_used(cli, pg, prod):
    dump = backup(cli, "--env=prod")
    wanted = table_fingerprints(pg, prod)
    restore_test(cli)
    [kept] = prestaged(pg, prod)
    # somebody opens it and deletes rows: the replace must not take it
    pg.psql(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true', "postgres")
    pg.psql("DELETE FROM public.votes", kept)
    add_vote(pg, prod)
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=VERBOSE)
    assert replaced.returncode == 0, replaced.stderr
    assert "書き込まれた可能性がある" in replaced.stderr and "pg_restore" in replaced.stderr
    assert table_fingerprints(pg, prod) == wanted
    assert kept not in databases(pg)

    # closed again after the change: the statistics catch it (the rows deleted), the file is restored
    restore_test(cli)
    [kept] = prestaged(pg, prod)
    pg.psql(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true', "postgres")
    pg.psql("DELETE FROM public.votes WHERE id IN (SELECT min(id) FROM public.votes)", kept)
    pg.psql(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS false', "postgres")
    add_vote(pg, prod)
    again = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=VERBOSE)
    assert again.returncode == 0, again.stderr
    assert "書き込まれています" in again.stderr and "pg_restore" in again.stderr
    assert table_fingerprints(pg, prod) == wanted
    assert not prestaged(pg, prod)


def test_a_refused_replace_keeps_the_prestaged_database_for_the_retry(cli, pg, prod):
    dump = backup(cli, "--env=prod")
    wanted = table_fingerprints(pg, prod)
    restore_test(cli)
    [kept] = prestaged(pg, prod)
    mark = comment_of(pg, kept)
    reader = role(pg, f"reader_{uuid.uuid4().hex[:6]}")
    pg.psql(f'GRANT SELECT ON public.votes TO "{reader}"', prod)  # granted after the backup
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=VERBOSE)
    assert refused.returncode == 1 and reader in refused.stderr, refused.stderr
    assert "閉じて残しました" in refused.stderr
    assert prestaged(pg, prod) == [kept] and allows_connections(pg, kept) == "f"
    assert comment_of(pg, kept) == mark
    no_prestaged = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                       "--accept-privilege-changes", "--no-prestaged", env=VERBOSE)
    assert no_prestaged.returncode == 0 and "pg_restore" in no_prestaged.stderr, no_prestaged.stderr
    assert prestaged(pg, prod) == [kept]  # not claimed
    accepted = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                   "--accept-privilege-changes", env=VERBOSE)
    assert accepted.returncode == 0, accepted.stderr
    assert f"事前展開 DB {kept} を使います" in accepted.stderr and "pg_restore" not in accepted.stderr
    assert table_fingerprints(pg, prod) == wanted


def test_kill_9_after_the_claim_is_repaired_by_restore_recover(cli, pg, prod, app_container):
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=prod, DB_PASSWORD=PASSWORD,
                  RESTORE_PRESTAGE="true", APP_CONTAINERS=app_container.name)
    dump = backup(cli, "--env=prod")
    old = table_fingerprints(pg, prod)
    restore_test(cli)
    add_vote(pg, prod)
    live = table_fingerprints(pg, prod)
    killed = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                 env={"PGRUNBOOK_TEST_KILL_AT": "checks"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    wait_for_kit_processes_to_end(pg)
    repaired = cli("restore-recover", "--env=prod", "--confirm=prod", env=VERBOSE)
    assert repaired.returncode == 0, repaired.stderr
    assert_clean_env(cli, pg, prod, app_container, (live,))
    assert not prestaged(pg, prod)  # claimed, then dropped as the run's staging DB
    restore_test(cli)  # the next restore test prestages it again
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=VERBOSE)
    assert replaced.returncode == 0 and "を使います" in replaced.stderr, replaced.stderr
    assert table_fingerprints(pg, prod) == old


def test_when_the_disk_cannot_hold_two_copies_the_old_prestaged_database_goes_first(cli, docker_engine):
    """The data directory on a small tmpfs: live + prestaged fill it so that a new restore
    test fits only once the prestaged database it replaces is dropped."""
    with small_disk(cli, docker_engine, "prestage-disk") as server:
        backup(cli, "--env=prod")
        restore_test(cli)
        [old] = prestaged(server, "big")
        server.psql("CHECKPOINT", "postgres")
        backup(cli, "--env=prod")
        size = int(server.psql("SELECT pg_database_size('big')", "postgres"))
        _, df, _ = server.exec(["df", "-Pk", DATA])
        free = int(df.decode().splitlines()[1].split()[3]) * 1024
        assert free < size * 1.1 < free + size, (free, size)  # the setup this test is about
        tested = restore_test(cli)
        assert f"古い事前展開 DB {old} を先に削除" in tested.stderr, tested.stderr
        [new] = prestaged(server, "big")
        assert new != old
