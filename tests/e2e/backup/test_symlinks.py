"""A backup reached through a symlink in the backup folder (issue 11, defect 9).

The sidecars (``.sha256``, ``.json``) belong beside the path the kit was given
(the link); when they are not there, beside the link's target.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from helpers import last_line


def made_backup(cli) -> Path:
    result = cli("backup", "--env=prod")
    assert result.returncode == 0, result.stderr
    return Path(last_line(result.stdout))


def sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in (".sha256", ".json")]


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    folder = tmp_path / "big-disk"
    folder.mkdir()
    return folder


def link_to(backup: Path, elsewhere: Path, *, move_sidecars: bool) -> Path:
    """Move the dump (and, if asked, its sidecars) elsewhere; leave a symlink in its place."""
    moved = elsewhere / backup.name
    backup.rename(moved)
    if move_sidecars:
        for sidecar in sidecars(backup):
            sidecar.rename(elsewhere / sidecar.name)
    backup.symlink_to(moved)
    return backup


def check_all_ways(cli, pg, link: Path) -> None:
    listing = cli("list", "--env=prod")
    row = next(line for line in listing.stdout.splitlines() if line.startswith(link.name))
    assert row.split("\t")[5] == "ok", row  # the checksum column
    for args in ([f"--file={link}"], [f"--file={link.name}"], []):
        verify = cli("verify", "--env=prod", *args)
        assert verify.returncode == 0, (args, verify.stderr)
        assert last_line(verify.stdout) == str(link)  # the path given, not its target
    scratch = f"app_link_{uuid.uuid4().hex[:8]}"
    try:
        restored = cli("restore-scratch", "--env=prod", f"--file={link}", f"--db={scratch}")
        assert restored.returncode == 0, restored.stderr
        assert last_line(restored.stdout) == scratch
        assert pg.psql("SELECT count(*) FROM public.members", scratch).strip() != "0"
        # no --file: the newest backup, which is the link
        again = cli("restore-scratch", "--env=prod", f"--db={scratch}", "--replace")
        assert again.returncode == 0, again.stderr
    finally:
        pg.psql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)', "postgres")


def test_sidecars_beside_the_link(cli, pg, elsewhere):
    link = link_to(made_backup(cli), elsewhere, move_sidecars=False)
    assert all(p.is_file() for p in sidecars(link)) and not list(elsewhere.glob("*.json"))
    check_all_ways(cli, pg, link)


def test_sidecars_beside_the_target(cli, pg, elsewhere):
    link = link_to(made_backup(cli), elsewhere, move_sidecars=True)
    assert not any(p.exists() for p in sidecars(link))
    check_all_ways(cli, pg, link)
