"""A clock that jumped: a backup dated in the future is never "the newest" (issue 11, defect 6).

The future-dated backup is a real one, made through the real CLI under
``faketime`` (Debian package), so its file name and manifest both say +200 days.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from helpers import at_offset, last_line

pytestmark = pytest.mark.skipif(shutil.which("faketime") is None,
                                reason="faketime (Debian package faketime) is not installed")


def test_a_future_dated_backup_hides_nothing_and_turns_status_red(cli, pg, tmp_path):
    ahead = at_offset(cli, "+200d", "backup", "--env=prod")
    assert ahead.returncode == 0, ahead.stderr
    future = Path(last_line(ahead.stdout))
    manifest = json.loads(Path(f"{future}.json").read_text())
    started = datetime.fromisoformat(manifest["started_at"]).replace(tzinfo=None)
    assert started > datetime.now() + timedelta(days=190)  # the manifest is skewed too
    # it is a good file: a verify of it passes, so a freshness check would trust it
    checked = cli("verify", "--env=prod", f"--file={future}")
    assert checked.returncode == 0, checked.stderr

    made = cli("backup", "--env=prod")
    assert made.returncode == 0, made.stderr
    just_made = Path(last_line(made.stdout))
    assert just_made.name < future.name  # by name, the skewed one sorts last

    verify = cli("verify", "--env=prod")  # no --file: the backup just made
    assert verify.returncode == 0, verify.stderr
    assert last_line(verify.stdout) == str(just_made)
    assert future.name in verify.stderr and "未来" in verify.stderr  # said, not hidden

    status = cli("status", "--env=prod")
    assert status.returncode == 2, status.stdout + status.stderr
    line = last_line(status.stdout)
    assert line.startswith("CRITICAL") and future.name in line and "未来" in line, line
    assert "時計" in line  # what to do

    # once the skewed file is moved out of the folder, status sees the real newest one
    aside = tmp_path / "aside"
    aside.mkdir()
    for path in future.parent.glob(future.name + "*"):
        path.rename(aside / path.name)
    fresh = cli("status", "--env=prod")
    assert fresh.returncode == 0, fresh.stdout
    assert just_made.name in fresh.stdout


def test_only_a_date_beyond_the_tolerance_counts_as_future(tmp_path):
    from pgrunbook.store import catalog

    now = datetime(2026, 12, 2, 12, 0, 0)
    soon = catalog.parse(tmp_path / catalog.backup_name("knot", "prod", now + timedelta(minutes=9), "custom"))
    late = catalog.parse(tmp_path / catalog.backup_name("knot", "prod", now + timedelta(minutes=11), "custom"))
    past = catalog.parse(tmp_path / catalog.backup_name("knot", "prod", now - timedelta(days=1), "custom"))
    assert catalog.ahead_of(soon, None, now) is None
    assert catalog.ahead_of(late, None, now) == timedelta(minutes=11)
    assert catalog.ahead_of(past, None, now) is None
    # a name of the past with a manifest of the future (the clock jumped mid-run, or a rename)
    skewed = {"started_at": (now + timedelta(days=200)).astimezone().isoformat()}
    assert catalog.ahead_of(past, skewed, now) == timedelta(days=200)
    assert catalog.ahead_of(past, {"started_at": "not a date"}, now) is None
