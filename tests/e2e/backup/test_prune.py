"""prune through the real CLI on a folder of dated backups: kit-made ones and foreign files.

No database is needed: prune reads only the folder and the work log.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

from helpers import Cli, at, make_backup
from pgrunbook.store import catalog


def a_week_in_one_month(now: datetime) -> tuple[datetime, datetime]:
    """Monday and Sunday of an ISO week 20-35 days back whose seven days share a month."""
    for back in range(20, 36):
        day = now - timedelta(days=back)
        monday = day - timedelta(days=day.weekday())
        sunday = monday + timedelta(days=6)
        if monday.month == sunday.month and now - at(sunday) > timedelta(days=12):
            return at(monday), at(sunday)
    raise AssertionError("no such week")  # pragma: no cover


def test_prune_keeps_exactly_what_the_policy_says(tmp_path):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db-not-needed", RETENTION_DAYS="10",
                  RETENTION_WEEKLY_DAYS="40", RETENTION_MONTHLY_DAYS="200", RETENTION_MIN_KEEP="2")
    folder = cli.backup_dir("prod")
    now = datetime.now()
    monday, sunday = a_week_in_one_month(now)
    month = (now - timedelta(days=100)).replace(day=1)
    expected_keep = {
        make_backup(folder, at(now - timedelta(days=1))),           # recent
        make_backup(folder, at(now - timedelta(days=5))),           # recent
        make_backup(folder, sunday),                                # newest of its week
        make_backup(folder, at(month.replace(day=15))),             # newest of its month
        make_backup(folder, at(now - timedelta(days=1)), "globals"),
        make_backup(folder, at(now - timedelta(days=300)), "globals"),  # newest 2 valid globals
    }
    expected_delete = {
        make_backup(folder, monday),                                # older one of the same week
        make_backup(folder, at(month)),                             # older one of the same month
        make_backup(folder, at(now - timedelta(days=300))),         # past every horizon
        make_backup(folder, at(now - timedelta(days=400)), "globals"),
    }
    foreign = {
        "knot-prod-20250101.dump",                                  # the runbook's hand-made name
        make_backup(folder, at(now - timedelta(days=500)), with_manifest=False),
        make_backup(folder, at(now - timedelta(days=501)), manifest_env="dev"),
        make_backup(folder, at(now - timedelta(days=502)), manifest_file="renamed.dump"),
        "notes.txt",
        "other-prod-20250101-030000.dump",
        make_backup(folder, at(now - timedelta(days=503)), env="dev"),
    }
    (folder / "knot-prod-20250101.dump").write_bytes(b"PGDMP hand made")
    (folder / "notes.txt").write_text("keep me")
    (folder / "other-prod-20250101-030000.dump").write_bytes(b"PGDMP")
    stale = folder / (catalog.backup_name("knot", "prod", now - timedelta(days=3), "custom") + ".partial")
    fresh = folder / (catalog.backup_name("knot", "prod", now, "custom") + ".partial")
    for partial in (stale, fresh):
        partial.write_bytes(b"PGDMP cut")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))
    before = sorted(p.name for p in folder.iterdir())

    dry = cli("prune", "--env=prod", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(p.name for p in folder.iterdir()) == before
    planned = {line.split("\t")[1] for line in dry.stdout.splitlines() if line.startswith("削除予定")}
    assert planned == expected_delete | {stale.name}

    result = cli("prune", "--env=prod")
    assert result.returncode == 0, result.stderr
    after = {p.name for p in folder.iterdir()}
    for name in expected_keep:
        assert {name, name + ".sha256", name + ".json"} <= after, name
    for name in expected_delete:
        assert not {name, name + ".sha256", name + ".json"} & after, name
    for name in foreign:
        assert name in after, name
    assert fresh.exists() and not stale.exists()
    kept_lines = {line.split("\t")[1] for line in result.stdout.splitlines() if line.startswith("保持")}
    assert kept_lines == expected_keep

    log = [json.loads(line) for line in (folder / "worklog.jsonl").read_text().splitlines()]
    deletions = {Path(r["file"]).name: r for r in log if r["task"] == "prune-delete"}
    assert set(deletions) == expected_delete | {stale.name}
    assert all(r["sha256"] for name, r in deletions.items() if name != stale.name)
    assert log[-1]["task"] == "prune" and log[-1]["result"] == "ok" and log[-1]["deleted"] == 5

    again = cli("prune", "--env=prod")
    assert again.returncode == 0 and "削除\t" not in again.stdout
    assert {p.name for p in folder.iterdir()} == after


def test_prune_never_touches_a_folder_of_foreign_files(tmp_path):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db-not-needed", RETENTION_DAYS="1", RETENTION_MIN_KEEP="1")
    folder = cli.backup_dir("prod")
    old = datetime.now() - timedelta(days=900)
    names = {make_backup(folder, old + timedelta(days=d), with_manifest=False) for d in range(5)}
    result = cli("prune", "--env=prod")
    assert result.returncode == 0, result.stderr
    assert names <= {p.name for p in folder.iterdir()}
    assert result.stdout.count("対象外") == 5
