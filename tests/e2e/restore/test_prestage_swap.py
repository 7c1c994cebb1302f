"""The prestaged replace in a blink (issue 24): what the restore test does at night so that
the replace need not (the planner's statistics, the record of the tables' files), and the
one read that proves the rows untouched instead of counting them, catching what a count
cannot. Behaviour only: the times are in runbooks/performance.md."""

from __future__ import annotations

from helpers import (
    PASSWORD,
    VERBOSE,
    add_vote,
    backup,
    comment_of,
    log_lines,
    prestaged,
    restore_test,
    table_fingerprints,
)


def _prestaging(cli, pg, database: str) -> None:
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=database, DB_PASSWORD=PASSWORD,
                  RESTORE_PRESTAGE="true")


def test_a_prestaged_replace_proves_the_rows_and_finds_the_statistics_made(cli, pg, target):
    _prestaging(cli, pg, target)
    pg.psql("ANALYZE", target)  # the live database's statistics, as autovacuum keeps them
    dump = backup(cli, "--env=prod")
    wanted = table_fingerprints(pg, target)
    restore_test(cli)
    [kept] = prestaged(pg, target)
    assert " analyzed=1 files=" in comment_of(pg, kept)
    pg.psql("CHECKPOINT", "postgres")  # as the server's own would within checkpoint_timeout
    add_vote(pg, target)
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=VERBOSE)
    assert replaced.returncode == 0, replaced.stderr
    # made by the restore test (or, from 18, carried in the archive): none after the swap
    assert "ANALYZE は不要" in replaced.stderr and "バックグラウンドで開始" not in replaced.stderr
    assert "CHECKPOINT" not in replaced.stderr  # written out already: nothing to flush before the stop
    assert int(pg.psql("SELECT count(*) FROM pg_stats WHERE schemaname = 'public'", target)) > 0
    assert table_fingerprints(pg, target) == wanted
    entry = [r for r in log_lines(cli) if r["task"] == "restore-replace"][-1]
    assert entry["result"] == "ok" and entry["prestaged"] == kept and entry["prestaged_rows"] == "untouched"


def test_a_row_changed_in_a_prestaged_database_is_caught_though_every_count_agrees(cli, pg, target):
    """Opened, one row updated, closed again: the mark and the row counts are as the restore
    test left them, but the statistics count the update. The file is restored instead."""
    _prestaging(cli, pg, target)
    dump = backup(cli, "--env=prod")
    wanted = table_fingerprints(pg, target)
    restore_test(cli)
    [kept] = prestaged(pg, target)
    pg.psql(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true', "postgres")
    pg.psql("UPDATE public.members SET name = name || ' (書き換え)' "
            "WHERE id = (SELECT min(id) FROM public.members)", kept)
    pg.psql(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS false', "postgres")
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=VERBOSE)
    assert replaced.returncode == 0, replaced.stderr
    assert "書き込まれています" in replaced.stderr and "pg_restore" in replaced.stderr, replaced.stderr
    assert table_fingerprints(pg, target) == wanted
    assert not prestaged(pg, target)
