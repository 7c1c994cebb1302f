"""A backup dated in the future never counts for retention, and check says so.

A backup made under a clock 200 days ahead (or copied in from such a host) is
kept, not deleted, but it never stands for "the newest good backups": it must
not push a real recent backup out of RETENTION_MIN_KEEP. prune and check name
it and say what to do. The backups are real ones, made through the real CLI
under ``faketime`` (Debian package), so names and manifests agree.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from helpers import PASSWORD, at_offset, last_line, samples

pytestmark = pytest.mark.skipif(shutil.which("faketime") is None,
                                reason="faketime (Debian package faketime) is not installed")


def made_at(cli, offset: str) -> Path:
    made = at_offset(cli, offset, "backup", "--env=prod")
    assert made.returncode == 0, made.stderr
    return Path(last_line(made.stdout))


def rows_of(stdout: str) -> dict[str, str]:
    """prune's result lines: name -> verdict and reasons."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            found[parts[1]] = f"{parts[0]}\t{parts[2]}"
    return found


def test_a_future_dated_backup_never_pushes_real_ones_out_of_retention(cli, pg):
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                  RETENTION_DAYS="1", RETENTION_WEEKLY_DAYS="0", RETENTION_MONTHLY_DAYS="0",
                  RETENTION_MIN_KEEP="2")
    oldest = made_at(cli, "-20d")  # beyond everything: deleted, with or without the skewed one
    older = made_at(cli, "-10d")
    recent = made_at(cli, "-5d")   # the backup job stopped 5 days ago: these two are the last good
    future = made_at(cli, "+200d")  # the clock was 200 days ahead when this one was made

    dry = cli("prune", "--env=prod", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    planned = rows_of(dry.stdout)
    assert planned[older.name].startswith("保持"), dry.stdout  # still one of the 2 newest good ones
    assert planned[recent.name].startswith("保持"), dry.stdout
    assert planned[oldest.name].startswith("削除予定"), dry.stdout
    assert planned[future.name].startswith("保持") and "未来" in planned[future.name], dry.stdout
    assert future.name in dry.stderr and "時計" in dry.stderr, dry.stderr  # what to do

    pruned = cli("prune", "--env=prod")
    assert pruned.returncode == 0, pruned.stderr
    assert future.name in pruned.stderr and "時計" in pruned.stderr, pruned.stderr
    assert not oldest.exists() and not Path(f"{oldest}.json").exists()
    for kept in (older, recent, future):  # the skewed one too: a person decides about it
        assert kept.exists() and Path(f"{kept}.json").exists() and Path(f"{kept}.sha256").exists()


def test_check_names_the_real_newest_backup_and_the_future_one(cli, pg):
    real = made_at(cli, "-1h")
    assert cli("verify", "--env=prod", f"--file={real}").returncode == 0
    future = made_at(cli, "+200d")

    checked = cli("check", "--env=prod")
    lines = [line for line in checked.stdout.splitlines() if "最新のバックアップ" in line]
    assert len(lines) == 1, checked.stdout
    newest = lines[0]
    # the real newest backup is judged on its own (verified, an hour old), not hidden
    assert newest.startswith("OK") and real.name in newest, checked.stdout
    skewed = [line for line in checked.stdout.splitlines() if future.name in line]
    assert len(skewed) == 1 and skewed[0].startswith("NG"), checked.stdout
    assert "未来" in skewed[0] and "時計" in skewed[0] and "未来の日時前" not in skewed[0], skewed
    assert checked.returncode == 2, checked.stdout


def test_metrics_never_read_a_future_dated_backup_as_fresh(cli, pg):
    """An alert on time() - pgrunbook_backup_last_verified_timestamp_seconds would stay
    quiet for 200 days if the skewed backup counted; the count of such backups is a
    metric of its own, to alert on."""

    real = made_at(cli, "-30h")  # the job stopped: the newest real backup is stale
    assert cli("verify", "--env=prod", f"--file={real}").returncode == 0
    future = made_at(cli, "+200d")
    assert cli("verify", "--env=prod", f"--file={future}").returncode == 0

    printed = cli("status", "--env=prod", "--format=prometheus")
    assert printed.returncode == 0, printed.stderr
    values = samples(printed.stdout)
    stamp = values[("pgrunbook_backup_last_verified_timestamp_seconds", "prod")]
    assert stamp == pytest.approx(datetime_of(real).timestamp()), printed.stdout
    assert values[("pgrunbook_backups_future", "prod")] == 1
    # the run logged under the skewed clock is not "the last successful run" either
    assert values[("pgrunbook_backup_last_success_timestamp_seconds", "prod")] < time.time()
    assert values[("pgrunbook_backups", "prod")] == 2


def datetime_of(path: Path):
    from pgrunbook.store import catalog

    parsed = catalog.parse(path)
    assert parsed is not None
    return parsed.created


def test_the_content_check_never_compares_with_a_future_dated_backup(cli, pg, target):
    """The drift check compares a new backup with the previous good one: never with one
    dated in the future, which would be "the previous one" for 200 days."""
    pg.psql("CREATE TABLE public.bulk AS SELECT g AS id FROM generate_series(1, 10) g", target)
    made_at(cli, "-1h")                                      # 10 rows
    pg.psql("INSERT INTO public.bulk SELECT g FROM generate_series(11, 1000) g", target)
    future = made_at(cli, "+200d")                           # 1000 rows, under a clock 200 days ahead
    pg.psql("DELETE FROM public.bulk WHERE id > 10", target)
    made = cli("backup", "--env=prod")                       # 10 rows again: as the real previous one
    assert made.returncode == 0, made.stdout + made.stderr
    manifest = json.loads(Path(f"{last_line(made.stdout)}.json").read_text())
    assert not manifest.get("suspect"), manifest.get("drift")
    assert (manifest.get("drift") or {}).get("compared_with") != future.name, manifest.get("drift")
