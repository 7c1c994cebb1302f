"""How the kit runs pg_restore (issue 24), through the real CLI: the archive read from a
file inside the container (streamed only when the container has no room for it), fewer
transactions on PostgreSQL 17+, the planner's statistics carried in the archive on 18+.
Behaviour only: the times are in runbooks/performance.md."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from helpers import PASSWORD, backup, databases, start_postgres, uploads

VERBOSE = {"PGRUNBOOK_VERBOSE": "1"}


def _xid(pg) -> int:
    return int(pg.psql("SELECT txid_current()", "postgres"))


@pytest.mark.matrix
def test_a_restore_on_17_and_later_commits_objects_in_batches(cli, pg, target):
    """pg_restore --transaction-size (17+): the sample's tables, sequences, data and indexes
    go in a handful of transactions instead of one each; older servers keep one each."""
    dump = backup(cli, "--env=prod")
    before = _xid(pg)
    scratch = f"{target}_scratch"
    result = cli("restore-scratch", "--env=prod", f"--file={dump}", f"--db={scratch}", "--jobs=1")
    assert result.returncode == 0, result.stderr
    consumed = _xid(pg) - before - 1
    objects = int(pg.psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                          "WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'", scratch))
    if pg.major >= 17:
        assert consumed < objects / 2, (consumed, objects)
    else:
        assert consumed >= objects / 2, (consumed, objects)


@pytest.mark.matrix
def test_the_planner_statistics_travel_in_the_archive_from_18(cli, pg, target):
    """pg_dump 18+ --statistics: the replaced database plans as the live one did right
    after the swap, with no ANALYZE started; before 18 the kit starts one."""
    pg.psql("ANALYZE", target)  # the live database's statistics, as autovacuum keeps them
    dump = backup(cli, "--env=prod")
    manifest = json.loads(Path(f"{dump}.json").read_text())
    assert manifest["statistics"] is (pg.major >= 18)
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=VERBOSE)
    assert replaced.returncode == 0, replaced.stderr
    planned = int(pg.psql("SELECT count(*) FROM pg_stats WHERE schemaname = 'public'", target))
    if pg.major >= 18:
        assert planned > 0
        assert "アーカイブから復元済み" in replaced.stderr
        assert "ANALYZE）をバックグラウンドで開始" not in replaced.stderr
    else:
        assert "ANALYZE）をバックグラウンドで開始" in replaced.stderr


def test_a_container_without_room_for_the_archive_gets_it_through_stdin(cli, docker_engine):
    """A -j 1 restore places the archive in the container's /tmp; when /tmp cannot hold it
    (a 4 KiB tmpfs here) the archive is streamed instead, and -j 2, which needs the file,
    is refused before anything is created."""
    name = f"pgrunbook-test-tinytmp-{uuid.uuid4().hex[:6]}"
    server = start_postgres(docker_engine, name, tmpfs={"/tmp": "size=4k"})
    try:
        server.create_database("app", sample=True)
        cli.write_env("prod", DB_CONTAINER=name, DB_NAME="app", DB_PASSWORD=PASSWORD)
        dump = backup(cli, "--env=prod")
        streamed = cli("restore-scratch", "--env=prod", f"--file={dump}", "--db=streamed", "--jobs=1",
                       env=VERBOSE)
        assert streamed.returncode == 0, streamed.stderr
        assert "標準入力から" in streamed.stderr and "アーカイブをコンテナへ送る" not in streamed.stderr
        assert "streamed" in databases(server)
        refused = cli("restore-scratch", "--env=prod", f"--file={dump}", "--db=parallel", "--jobs=2")
        assert refused.returncode == 1 and "ディスクの空きが足りません" in refused.stderr, refused.stderr
        assert "parallel" not in databases(server) and not uploads(server)
    finally:
        server.container.remove(force=True, v=True)
