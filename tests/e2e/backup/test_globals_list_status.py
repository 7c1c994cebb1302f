"""backup-globals, list and status through the real CLI against the real container."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from helpers import PASSWORD, last_line
from pgrunbook.store import catalog


def columns(stdout: str) -> dict[str, list[str]]:
    rows = [line.split("\t") for line in stdout.splitlines() if line.strip()]
    assert all(len(row) == 9 for row in rows), stdout  # ... checksum, label, keep-until, content
    return {row[0]: row for row in rows}


@pytest.mark.matrix
def test_backup_globals_saves_roles_without_passwords_unless_asked(cli, pg):
    result = cli("backup-globals", "--env=prod")
    assert result.returncode == 0, result.stderr
    path = Path(last_line(result.stdout))
    parsed = catalog.parse(path)
    assert parsed and parsed.format == "globals" and parsed.env == "prod"
    assert path.name.startswith("knot-prod-globals-") and path.suffix == ".sql"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "CREATE ROLE app;" in text and "SCRAM-SHA-256$" not in text
    manifest = json.loads(Path(f"{path}.json").read_text())
    assert manifest["kind"] == "pgrunbook-globals" and manifest["options"]["role_passwords"] is False
    assert manifest["roles"] >= 1 and manifest["file"] == path.name
    assert not list(path.parent.glob("*.partial"))

    with_passwords = cli("backup-globals", "--env=prod", "--with-role-passwords")
    assert with_passwords.returncode == 0, with_passwords.stderr
    secret_file = Path(last_line(with_passwords.stdout))
    assert secret_file != path and "SCRAM-SHA-256$" in secret_file.read_text()
    assert PASSWORD not in secret_file.read_text() + with_passwords.stderr

    # a globals file is never "the newest backup" of verify, but can be verified by name
    newest = cli("verify", "--env=prod")
    assert newest.returncode == 1 and "バックアップがありません" in newest.stderr
    checked = cli("verify", "--env=prod", f"--file={path}")
    assert checked.returncode == 0, checked.stderr

    dry = cli("backup-globals", "--env=prod", "--dry-run")
    assert "pg_dumpall -U app --globals-only --no-role-passwords" in dry.stdout


def make_older(path: Path, days: int) -> Path:
    """The same backup under a name (and sidecars) from `days` days earlier."""
    parsed = catalog.parse(path)
    when = parsed.created - timedelta(days=days)
    older = path.with_name(catalog.backup_name("knot", "prod", when, parsed.format))
    os.rename(path, older)
    manifest = json.loads(Path(f"{path}.json").read_text())
    manifest["file"] = older.name
    Path(f"{older}.json").write_text(json.dumps(manifest))
    Path(f"{older}.sha256").write_text(f"{manifest['sha256']}  {older.name}\n")
    Path(f"{path}.json").unlink()
    Path(f"{path}.sha256").unlink()
    return older


def test_list_and_status_follow_backups_and_verifications(cli, pg):
    none = cli("status", "--env=prod")
    assert none.returncode == 2 and none.stdout.startswith("CRITICAL"), none.stdout + none.stderr
    assert len(none.stdout.strip().splitlines()) == 1

    dump = Path(last_line(cli("backup", "--env=prod").stdout))
    roles = Path(last_line(cli("backup-globals", "--env=prod").stdout))
    unverified = cli("status", "--env=prod")
    assert unverified.returncode == 2 and "未検証のバックアップは 1 件" in unverified.stdout

    listing = cli("list", "--env=prod")
    assert listing.returncode == 0, listing.stderr
    rows = columns(listing.stdout)
    assert set(rows) == {dump.name, roles.name}
    assert rows[dump.name][1] == "custom" and rows[roles.name][1] == "globals"
    assert rows[dump.name][4] == "未" and rows[dump.name][5] == "ok"

    assert cli("verify", "--env=prod").returncode == 0
    rows = columns(cli("list", "--env=prod").stdout)
    assert rows[dump.name][4].startswith("済") and rows[roles.name][4] == "未"
    fresh = cli("status", "--env=prod", "--max-age=26h")
    assert fresh.returncode == 0 and fresh.stdout.startswith("OK") and dump.name in fresh.stdout

    # a file changed after its verification is no longer "verified"
    manifest_path = Path(f"{dump}.json")
    manifest = json.loads(manifest_path.read_text())
    original = manifest["sha256"]
    manifest["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    Path(f"{dump}.sha256").write_text(f"{'0' * 64}  {dump.name}\n")
    rows = columns(cli("list", "--env=prod").stdout)
    assert rows[dump.name][4] == "未"
    assert cli("status", "--env=prod").returncode == 2
    manifest["sha256"] = original
    manifest_path.write_text(json.dumps(manifest))
    Path(f"{dump}.sha256").write_text(f"{original}  {dump.name}\n")
    assert cli("status", "--env=prod").returncode == 0

    # the only verified backup is two days old: stale
    older = make_older(dump, days=2)
    assert cli("verify", "--env=prod", f"--file={older}").returncode == 0
    stale = cli("status", "--env=prod", "--max-age=26h")
    assert stale.returncode == 1 and stale.stdout.startswith("STALE") and older.name in stale.stdout
    assert cli("status", "--env=prod", "--max-age=3d").returncode == 0
    bad = cli("status", "--env=prod", "--max-age=soon")
    assert bad.returncode == 2 and "期間" in bad.stderr

    # checksum states in the list
    Path(f"{older}.sha256").unlink()
    rows = columns(cli("list", "--env=prod").stdout)
    assert rows[older.name][5] == "なし" and rows[older.name][4] == "未"
