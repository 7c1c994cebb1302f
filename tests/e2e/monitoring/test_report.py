"""Restore drills with evidence and ``invoke report`` (issue 13)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from helpers import last_line
from pgrunbook.core.settings import load_settings
from pgrunbook.monitoring import report


def worklog(cli, env: str = "prod") -> list[dict]:
    path = cli.backup_dir(env) / "worklog.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def no_external_assets(page: str) -> None:
    assert not re.search(r"\b(src|href)\s*=", page, re.I)
    assert "url(" not in page and "@import" not in page and "<script" not in page.lower()
    assert "<link" not in page.lower()


def test_restore_test_records_a_drill_and_report_draws_it(cli, pg):
    for _ in range(2):
        assert cli("backup", "--env=prod").returncode == 0
    done = cli("verify", "--env=prod", "--restore-test")
    assert done.returncode == 0, done.stderr
    path = last_line(done.stdout)
    drills = [r for r in worklog(cli) if r["task"] == "restore-drill"]
    assert len(drills) == 1
    drill = drills[0]
    manifest = json.loads(open(path + ".json").read())
    assert drill["file"] == path and drill["result"] == "ok"
    assert drill["duration_seconds"] > 0
    assert drill["tables_compared"] == len(manifest["tables"]) > 0
    assert drill["rows_compared"] == sum(t["rows"] for t in manifest["tables"]) > 0
    assert "復元訓練を記録しました" in done.stderr

    made = cli("report", "--env=prod")
    assert made.returncode == 0, made.stderr
    page_path = cli.home / last_line(made.stdout)
    assert page_path == cli.backup_dir("prod") / "report-prod.html"
    assert stat.S_IMODE(page_path.stat().st_mode) == 0o600
    page = page_path.read_text()
    no_external_assets(page)
    assert page.count("<svg") == 3
    # two backups in the size and duration charts, one drill
    assert page.count("<circle") == 2 + 2 + 1
    assert "OK env=prod" in page and manifest["file"] in page


def test_a_failed_drill_is_recorded_and_shown_red(cli, pg):
    made = cli("backup", "--env=prod")
    path = last_line(made.stdout)
    manifest_path = path + ".json"
    manifest = json.loads(open(manifest_path).read())
    manifest["tables"][0]["rows"] += 1  # the backup "had" one row more than it holds
    open(manifest_path, "w").write(json.dumps(manifest))
    done = cli("verify", "--env=prod", "--restore-test")
    assert done.returncode == 1 and "差異" in done.stderr
    drill = [r for r in worklog(cli) if r["task"] == "restore-drill"][-1]
    assert drill["result"] == "failed" and "差異" in drill["error"]
    page = (cli.home / last_line(cli("report", "--env=prod").stdout)).read_text()
    assert '<tr class="bad">' in page and 'class="dot bad"' in page


def test_report_output_folder_must_exist(cli, tmp_path):
    done = cli("report", "--env=prod", f"--output={tmp_path}/nowhere/r.html")
    assert done.returncode == 1 and "ありません" in done.stderr
    assert not (tmp_path / "nowhere").exists()


def synthetic_env(tmp_path, sizes: list[int]):
    (tmp_path / ".env.prod").write_text("DB_CONTAINER=knot-db\n")
    folder = tmp_path / "backups" / "prod"
    folder.mkdir(parents=True)
    start = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)
    lines = [{"time": (start + timedelta(days=i)).isoformat(), "task": "backup", "env": "prod",
              "file": f"/x/knot-prod-{i:02d}.dump", "result": "ok", "size": size,
              "duration_seconds": 10 + i} for i, size in enumerate(sizes)]
    lines.append({"time": start.isoformat(), "task": "backup", "env": "dev", "file": "/y/d.dump",
                  "result": "ok", "size": 1, "duration_seconds": 1})
    (folder / "worklog.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return load_settings("prod", tmp_path)


def test_a_sudden_drop_in_size_is_marked(tmp_path):
    settings = synthetic_env(tmp_path, [1000, 1010, 1020, 400, 1030])
    runs = report.backup_runs(settings)
    assert [r.file for r in runs][3] == "knot-prod-03.dump" and len(runs) == 5  # not dev's
    assert report.sudden_drops(runs) == {3}
    page = report.render(settings)
    assert "サイズが急に減ったバックアップ: knot-prod-03.dump" in page
    assert page.count('class="dot bad"') == 1
    no_external_assets(page)


def test_growth_is_not_a_drop():
    runs = [report.BackupRun(datetime(2026, 1, d), f"f{d}", s, 1.0, "ok", None)
            for d, s in enumerate([100, 50, 200, 210, 220], start=1)]
    assert report.sudden_drops(runs) == set()  # 50 after one backup only: no history yet


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium is not installed")
def test_the_page_renders_in_a_real_browser(tmp_path):
    settings = synthetic_env(tmp_path, [1000, 1010, 1020, 400, 1030])
    page = report.write_report(settings)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert "バックアップのサイズ" in dom.stdout and dom.stdout.count("<circle") == 10
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", *flags, "--window-size=900,1400", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120, cwd=tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
