"""A smoke run of the benchmark, so it cannot rot. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import IMAGE, ROOT


def test_benchmark_smoke_run(tmp_path, docker_engine):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--size-mb", "2", "--rounds", "1",
         "--image", IMAGE, "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    for name in ("hand_backup_app", "kit_backup_bench", "hand_restore", "kit_restore",
                 "hand_backup_tiny", "kit_backup_tiny"):
        assert len(report["times_seconds"][name]) == 1
    assert set(report["ratios"]) == {"backup", "restore_replace", "tiny_overhead_seconds", "peak_rss_mb"}
    assert report["archive_bytes"]["kit_archive"] > 0 and report["archive_bytes"]["hand_archive"] > 0
    assert "| バックアップ |" in (tmp_path / "bench.md").read_text()
