"""One replace of a database at a time, whichever host or checkout runs it: the
server holds the lock (an advisory lock in the ``postgres`` database, held by one
session for the run's length), kit databases cannot share a name, and another
host's unfinished run is refused by name instead of being overwritten."""

from __future__ import annotations

import json

from helpers import PASSWORD, Cli, backup, databases, paused, table_fingerprints

JOURNAL = ".restore-in-progress.json"


def test_two_checkouts_replacing_one_database_at_once_one_is_refused_by_the_server(cli, pg, target, tmp_path):
    other = Cli(tmp_path / "second-checkout")
    other.home.mkdir()
    other.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_PASSWORD=PASSWORD)
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    with paused(cli, "apps-stop", tmp_path, "restore-replace", "--env=prod", f"--file={dump}",
                "--confirm=prod") as first:
        first.reached("the first replace restored and about to swap")
        [staging] = [d for d in databases(pg) if d.startswith(target + "_pgrunbook_staging_")]
        second = other("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
        assert second.returncode == 1, second.stderr
        assert "restore-replace" in second.stderr and "実行中" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr and "duplicate key" not in second.stderr
        # nothing of the second run, and the first run's staging database untouched
        assert [d for d in databases(pg) if "_staging_" in d and d.startswith(target)] == [staging]
        assert not (other.backup_dir("prod") / JOURNAL).exists()
        done = first.go()
    assert done.returncode == 0, done.stderr
    assert table_fingerprints(pg, target) == before
    again = other("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")  # the lock is free
    assert again.returncode == 0, again.stderr


def test_another_hosts_unfinished_replace_is_refused_naming_the_host(cli, pg, target):
    dump = backup(cli, "--env=prod")
    record = {"task": "restore-replace", "env": "prod", "database": target, "pid": 4242,
              "host": "db-admin-2", "operator": "ops", "started_at": "2026-01-28T02:00:00+09:00",
              "stage": "swap", "apps_stopped": ["knot-web-gone"]}
    path = cli.backup_dir("prod") / JOURNAL
    path.write_text(json.dumps(record))
    noticed = cli("list", "--env=prod")
    assert "db-admin-2" in noticed.stderr and "restore-recover --env=prod" in noticed.stderr, noticed.stderr
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert refused.returncode == 1, refused.stderr
    assert "db-admin-2" in refused.stderr and "restore-recover --env=prod" in refused.stderr, refused.stderr
    assert json.loads(path.read_text()) == record  # not overwritten
    assert not [d for d in databases(pg) if d.startswith(target) and "_staging_" in d]
    checked = cli("check", "--env=prod")
    assert checked.returncode == 2 and any(
        line.startswith("NG") and "db-admin-2" in line for line in checked.stdout.splitlines()), checked.stdout
    # that host is gone (or was this one under another name): no run holds the server's
    # lock, so the recovery runs here
    repaired = cli("restore-recover", "--env=prod", "--confirm=prod")
    assert repaired.returncode == 0, repaired.stderr
    assert not path.exists()
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert replaced.returncode == 0, replaced.stderr
