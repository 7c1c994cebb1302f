"""verify: accepts good backups (also old hand-made names), rejects broken ones."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from helpers import last_line


@pytest.fixture
def good(cli):
    result = cli("backup", "--env=prod")
    assert result.returncode == 0, result.stderr
    from pathlib import Path

    return Path(last_line(result.stdout))


def copy_set(source, target):
    for suffix in ("", ".sha256", ".json"):
        shutil.copy(str(source) + suffix, str(target) + suffix)


@pytest.mark.matrix
def test_verify_newest_backup_ok(cli, good):
    sql = cli("backup-sql", "--env=prod")
    assert sql.returncode == 0
    result = cli("verify", "--env=prod")
    assert result.returncode == 0, result.stderr
    assert last_line(result.stdout) == last_line(sql.stdout)  # the newest one
    explicit = cli("verify", "--env=prod", f"--file={good}")
    assert explicit.returncode == 0, explicit.stderr
    assert "検証 OK" in explicit.stderr


def test_verify_rejects_empty_file(cli, good):
    empty = good.with_name("knot-prod-20200101-000000.dump")
    empty.write_bytes(b"")
    result = cli("verify", "--env=prod", f"--file={empty}")
    assert result.returncode == 1
    assert "[size]" in result.stderr


@pytest.mark.matrix
def test_verify_rejects_truncated_file(cli, good):
    truncated = good.with_name("knot-prod-20200101-000001.dump")
    copy_set(good, truncated)
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    result = cli("verify", "--env=prod", f"--file={truncated}")
    assert result.returncode == 1 and "[sha256]" in result.stderr

    # without sidecars (an old hand-made file) the full read still catches it
    legacy = good.with_name("knot-prod-20200102.dump")
    legacy.write_bytes(data[: len(data) * 2 // 3])
    result = cli("verify", "--env=prod", f"--file={legacy}")
    assert result.returncode == 1 and "[readable]" in result.stderr, result.stderr


def test_verify_rejects_checksum_mismatch(cli, good):
    tampered = good.with_name("knot-prod-20200101-000002.dump")
    copy_set(good, tampered)
    data = bytearray(good.read_bytes())
    data[-10] ^= 0xFF
    tampered.write_bytes(bytes(data))
    result = cli("verify", "--env=prod", f"--file={tampered}")
    assert result.returncode == 1
    assert "[sha256]" in result.stderr


def test_verify_rejects_file_of_another_env(cli):
    dev = cli("backup", "--env=dev")
    assert dev.returncode == 0, dev.stderr
    result = cli("verify", "--env=prod", f"--file={last_line(dev.stdout)}")
    assert result.returncode == 1 and "[env]" in result.stderr

    # renamed to look like prod: the manifest still says dev
    from pathlib import Path

    disguised = cli.backup_dir("prod") / "knot-prod-20200103-000000.dump"
    cli.backup_dir("prod").mkdir(parents=True, exist_ok=True)
    copy_set(Path(last_line(dev.stdout)), disguised)
    result = cli("verify", "--env=prod", f"--file={disguised}")
    assert result.returncode == 1 and "[manifest]" in result.stderr
    assert json.loads(disguised.with_name(disguised.name + ".json").read_text())["env"] == "dev"


def test_verify_accepts_legacy_name_with_warning(cli, good):
    legacy = good.with_name("knot-prod-20260128.dump")
    shutil.copy(good, legacy)
    result = cli("verify", "--env=prod", f"--file={legacy}")
    assert result.returncode == 0, result.stderr
    assert "旧形式" in result.stderr


def test_verify_rejects_sql_without_completion(cli):
    sql = cli("backup-sql", "--env=prod")
    from pathlib import Path

    path = Path(last_line(sql.stdout))
    cut = path.with_name("knot-prod-20200101.sql")
    text = path.read_bytes()
    cut.write_bytes(text[: len(text) // 2])
    result = cli("verify", "--env=prod", f"--file={cut}")
    assert result.returncode == 1 and "[complete]" in result.stderr


def test_verify_without_backups(cli):
    result = cli("verify", "--env=prod")
    assert result.returncode == 1 and "invoke backup --env=prod" in result.stderr


def test_verify_names_an_archive_from_a_newer_postgresql(cli, good):
    newer = good.with_name("knot-prod-20200101-000003.dump")
    copy_set(good, newer)
    data = bytearray(good.read_bytes())
    data[6] = 16  # archive format 1.16 (PostgreSQL 17): this container's pg_restore cannot read it
    newer.write_bytes(bytes(data))
    result = cli("verify", "--env=prod", f"--file={newer}")
    assert result.returncode == 1
    assert re.search(r"pg_restore \d+\.\d+ では読めません", result.stderr), result.stderr  # its own version
    assert "壊れたファイルです" not in result.stderr  # a good newer file is not called broken
