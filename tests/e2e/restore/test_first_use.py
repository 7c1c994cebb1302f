"""What a new user ran into with the restores (fresh clone, README only): restore-scratch
saying which file it took only on a terminal, a DATABASE_URL that points at a port the
container never published, the rollback banner calling a database a file with an
unknown date, a second rollback told "not a pre-replace database", and a truncated copy
without sidecars refused for its missing .sha256 instead of for being truncated.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from helpers import PASSWORD, backup, databases, last_line, log_lines


def test_restore_scratch_names_its_file_under_cron_too(cli, pg, target):
    dump = backup(cli, "--env=prod")
    assert cli("verify", "--env=prod").returncode == 0
    # no terminal, no PGRUNBOOK_VERBOSE: what cron mails and a pipe shows
    env = {key: value for key, value in os.environ.items() if key != "PGRUNBOOK_VERBOSE"}
    result = cli("restore-scratch", "--env=prod", env=env)
    assert result.returncode == 0, result.stderr
    assert "・" not in result.stderr  # no step lines: only the summary speaks
    summary = [line for line in result.stderr.splitlines() if last_line(result.stdout) in line]
    assert summary and dump.name in summary[-1], result.stderr


def test_scratch_on_a_container_without_a_published_port_says_how_to_reach_it(cli, pg, target):
    """The test server has no network at all, like the sandbox: localhost:5432 leads nowhere."""
    dump = backup(cli, "--env=prod")
    result = cli("restore-scratch", "--env=prod", f"--file={dump}")
    assert result.returncode == 0, result.stderr
    scratch = last_line(result.stdout)
    assert "localhost:5432" not in result.stderr, result.stderr
    assert f"docker exec -it -e PGPASSWORD {pg.name} psql -U app -d {scratch}" in result.stderr
    assert "APP_DATABASE_URL" in result.stderr

    # with the app's own URL, that URL aimed at the scratch database (password masked)
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_PASSWORD=PASSWORD,
                  APP_DATABASE_URL=f"postgresql://app:{PASSWORD}@db.internal:6432/{target}")
    again = cli("restore-scratch", "--env=prod", f"--file={dump}", "--replace")
    assert again.returncode == 0, again.stderr
    assert f"DATABASE_URL=postgresql://app:***@db.internal:6432/{scratch}" in again.stderr
    assert PASSWORD not in again.stderr


def replaced(cli) -> tuple[Path, str]:
    """A backup, and the pre-replace database a replace with it kept."""
    dump = backup(cli, "--env=prod")
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert result.returncode == 0, result.stderr
    return dump, last_line(result.stdout)


def test_rollback_banner_names_the_kept_database_and_when_it_was_kept(cli, pg, target):
    dump, previous = replaced(cli)
    stamp = re.search(r"_(\d{8})(\d{6})\d{3}_[0-9a-f]+$", previous)  # kit_name: to the ms, then a random part
    assert stamp, previous
    rollback = cli("restore-rollback", "--env=prod", f"--previous={previous}", "--confirm=prod")
    assert rollback.returncode == 0, rollback.stderr
    banner = rollback.stderr[: rollback.stderr.index("=" * 64, rollback.stderr.index("=" * 64) + 1)]
    assert "ファイル" not in banner, banner
    assert "不明" not in banner, banner
    assert f"戻す DB    : {previous}" in banner, banner
    day, time = stamp[1], stamp[2]
    assert f"{day[:4]}-{day[4:6]}-{day[6:]} {time[:2]}:{time[2:4]}" in banner, banner
    assert dump.name in banner  # the file the replace restored


def test_a_second_rollback_says_it_was_already_rolled_back(cli, pg, target):
    _, previous = replaced(cli)
    rollback = cli("restore-rollback", "--env=prod", f"--previous={previous}", "--confirm=prod")
    assert rollback.returncode == 0, rollback.stderr
    rolled = last_line(rollback.stdout)
    second = cli("restore-rollback", "--env=prod", f"--previous={previous}", "--confirm=prod")
    assert second.returncode == 1, second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert "ロールバック済み" in line and rolled in line, line
    assert "置き換え前 DB ではありません" not in line
    assert log_lines(cli)[-1]["result"] == "refused"
    assert rolled in databases(pg) and previous not in databases(pg)


def test_a_truncated_copy_without_sidecars_is_refused_as_truncated(cli, pg, target):
    dump = backup(cli, "--env=prod")
    copies = cli.home / "copied"
    copies.mkdir()
    copy = copies / dump.name  # the kit's name, but no .sha256 or .json beside it
    shutil.copyfile(dump, copy)
    os.truncate(copy, copy.stat().st_size * 2 // 3)

    for task in ("restore-scratch", "verify"):
        result = cli(task, "--env=prod", f"--file={copy}")
        assert result.returncode == 1, result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert "途中" in line and "readable" in line, (task, line)
        assert ".sha256 がありません" not in line, (task, line)
    assert not [d for d in databases(pg) if d.startswith(f"{target}_restore_")]
    record = [r for r in log_lines(cli) if r["task"] == "restore-scratch"][-1]
    assert record["result"] == "failed"
