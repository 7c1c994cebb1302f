"""The host's disk fills during a backup (issue 11, defect 8): one line, nothing left.

BACKUP_DIR is a 1 MiB tmpfs (needs root to mount; skipped otherwise) and the
database's dump is several MiB of incompressible text.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from helpers import PASSWORD, Cli, backup_like_files


@pytest.fixture
def tiny_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=True)


@pytest.fixture
def large_database(pg):
    name = f"full_{uuid.uuid4().hex[:8]}"
    pg.create_database(name)
    pg.psql("CREATE TABLE filler AS SELECT g AS id, md5(random()::text) || md5(random()::text) "
            "|| md5(random()::text) AS payload FROM generate_series(1, 60000) AS g", name)
    yield name
    pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres")


@pytest.mark.parametrize("task", ["backup", "backup-sql"])
def test_a_full_disk_gives_one_line_and_leaves_nothing(tmp_path, pg, tiny_disk, large_database, task):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=large_database, DB_PASSWORD=PASSWORD,
                  BACKUP_DIR=str(tiny_disk))
    result = cli(task, "--env=prod")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Errno" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("エラー: ") and "空き" in lines[-1], result.stderr
    assert str(tiny_disk) in lines[-1] and "prune" in lines[-1]  # where, and what to do
    assert backup_like_files(tiny_disk) == []
    assert not [p for p in tiny_disk.iterdir() if p.name.endswith((".json", ".sha256", ".tmp"))]
    log = [json.loads(line) for line in (tiny_disk / "worklog.jsonl").read_text().splitlines()]
    assert log[-1]["task"] == task and log[-1]["result"] == "failed"
    sessions = pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgrunbook-%' "
                       f"AND datname = '{large_database}'", "postgres")
    assert sessions.strip() == "0"  # no pg_dump left running for a file nobody writes


def test_a_disk_full_before_the_start_gives_one_line(tmp_path, pg, tiny_disk):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                  BACKUP_DIR=str(tiny_disk))
    filler = tiny_disk / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"x" * 4096)
        except OSError:
            pass
    result = cli("backup", "--env=prod")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("エラー: ") and "ディスク" in lines[-1] and "空き" in lines[-1], result.stderr
    filler.unlink()
    assert backup_like_files(tiny_disk) == []
