"""A smoke run of the benchmark, so it cannot rot. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import IMAGE, ROOT


def test_benchmark_smoke_run(tmp_path, docker_engine):
    """One run of the benchmark at a tiny size, so it cannot rot: the few-large-tables dataset
    (the default one is the partial bench's, below), the per-step breakdown, a variant and a
    bare pg_restore beside the kit, the quarter size, a prestaged replace, and two reports side
    by side. One run, not one per feature: the bench's fixed cost is most of a tiny run.
    No timing is asserted."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--size-mb", "8", "--rounds", "1",
         "--image", IMAGE, "--output", str(tmp_path), "--dataset", "large-tables", "--prestaged",
         "--variants", "mwm,bare-stdin", "--tag", "test"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    formats = list(report["formats"])
    assert formats == (["gzip:1", "lz4", "zstd:1", "zstd:3"] if int(report["server_version"].split(".")[0]) >= 16 else ["1"])
    kit_format = report["kit_compression"]
    assert report["downtime_at_a_quarter"]["kit_seconds"] > 0  # measured in the same run, smaller
    assert len(report["times_seconds"][f"kit_downtime[{kit_format}]@quarter"]) == 1
    for name in ("hand_backup_app", "hand_restore", "hand_downtime", "hand_backup_tiny", "kit_backup_tiny",
                 *(f"kit_{step}[{spec}]" for spec in formats for step in ("backup", "restore", "downtime"))):
        assert len(report["times_seconds"][name]) == 1, name
    # the app container really was stopped and started: the engine's kill and start events of
    # the app were seen during the replace (the bench takes the downtime from them)
    for spec in formats:
        assert report["times_seconds"][f"kit_downtime[{spec}]"][0] > 0
    assert set(report["ratios"]) == {"backup", "restore_replace", "downtime_seconds", "hand_downtime_seconds",
                                     "downtime", "tiny_overhead_seconds", "peak_rss_mb"}
    assert report["archive_bytes"]["hand_archive"] > 0
    assert all(report["archive_bytes"][f"kit_archive[{spec}]"] > 0 for spec in formats)
    # the replace of a prestaged backup: measured, and only a swap (its timeline has no pg_restore)
    assert report["prestaged"]["restore_replace_seconds"] > 0 and report["prestaged"]["ratio_to_hand"] > 0
    prestaged_lines = [line for _t, line in report["last_timelines"][f"kit_restore[{kit_format}]@prestaged"]]
    assert any("事前展開 DB" in line for line in prestaged_lines)
    assert not any(line.startswith("・pg_restore") for line in prestaged_lines), prestaged_lines
    # the few-large-tables dataset and the replace step by step
    assert report["dataset"] == "large-tables"
    assert set(report["table_rows"]) == {"orders", "events"}
    assert int(report["table_rows"]["orders"]) > int(report["table_rows"]["events"]) > 0
    steps = report["steps_seconds"]
    assert set(steps["hand_restore"]) == {"接続の切断・DROP・CREATE", "docker cp", "pg_restore"}
    kit = steps[f"kit_restore[{kit_format}]"]
    assert "staging への復元（pg_restore）" in kit and "CHECKPOINT（アプリの停止前）" in kit
    assert set(steps[f"kit_downtime[{kit_format}]"]) == {"docker_stop", "until_swap", "swap", "docker_start"}
    assert all(value >= 0 for value in steps[f"kit_downtime[{kit_format}]"].values())
    assert set(report["variants"]) == {"mwm"} and report["variants"]["mwm"]["restore_replace_seconds"] > 0
    # the kit's own pg_restore beside a bare one of the same file (and the same through stdin),
    # each with its ratio in the round and the container's CPU seconds; the kit uploaded its file
    step = report["restore_step"]
    assert step["bare_seconds"] > 0 and step["bare_cpu_seconds"] > 0
    assert set(step["ways"]) == {"kit", "kit+mwm", "bare-stdin"}
    assert all(len(way["ratios"]) == 1 and way["ratio"] > 0 and way["cpu_seconds"] > 0
               for way in step["ways"].values()), step
    assert "アーカイブの送信（sha256 を同時に計算）" in kit and step["upload_seconds"] > 0
    text = (tmp_path / "bench.md").read_text()
    assert text.startswith("**書き込みが止まる時間") and "| 置き換えリストア 手作業 → キット |" in text
    assert "置き換えリストアの段階ごとの時間" in text and "maintenance_work_mem=256MB" in text
    assert "pg_restore の段階" in text and "docker exec -i" in text

    # two reports side by side, nothing run
    combined = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--combine",
         "--beside", str(tmp_path / "bench.json"), "--beside", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=60)
    assert combined.returncode == 0, combined.stderr
    assert combined.stdout.count("PostgreSQL " + report["server_version"]) >= 4


def test_partial_benchmark_smoke_run(tmp_path, docker_engine):
    """bench --partial at a tiny size: both measured in one run, the partial's steps named, the
    app neither stopped nor cut off during it. No timing is asserted."""
    result = subprocess.run(
        [sys.executable, "-m", "pgrunbook.lab.partial_bench", "--size-mb", "20", "--rows", "20000",
         "--rounds", "1", "--image", IMAGE, "--output", str(tmp_path), "--tag", "test"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ), cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "partial.json").read_text())
    assert report["rows_put_back"] == [200]
    assert len(report["times_seconds"]["partial"]) == len(report["times_seconds"]["replace"]) == 1
    assert len(report["times_seconds"]["partial_where"]) == 1 and report["ratio_where"] > 0
    assert report["app_container_stops_during_partial"] == [0, 0]  # both partial runs
    assert report["app_sessions_ended_during_partial"] == [0, 0]
    assert "作業用 DB への復元（そのテーブルの行だけ）" in report["partial_steps_seconds"]
    assert "| 比（一部 / 全体） |" in (tmp_path / "partial.md").read_text()
