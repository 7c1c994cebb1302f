"""The key drill through the real CLI: moto's S3 on 127.0.0.1, age keys made by the kit,
a verified backup of the real server pushed offsite, then a clean host (an empty
checkout-like folder with only the settings) that has nothing but the escrowed identity."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from helpers import at_offset, backup_like_files, last_line, samples
from helpers.offsite import BUCKET, OffsiteCli, offsite_env
from pgrunbook.offsite.encryption import fingerprint


def worklog(runner, env: str = "prod") -> list[dict]:
    path = runner.backup_dir(env) / "worklog.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"keys-{uuid.uuid4().hex[:6]}/"


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, pg, s3, age_keys, prefix):
    """The backup host: one verified backup of the real server, pushed offsite."""
    runner = OffsiteCli(tmp_path_factory.mktemp("backup-host"), s3, pg.name)
    offsite_env(runner, s3, age_keys, "prod", OFFSITE_PREFIX=prefix)
    assert runner("backup", "--env=prod").returncode == 0
    assert runner("verify", "--env=prod").returncode == 0
    done = runner("offsite-push", "--env=prod")
    assert done.returncode == 0, done.stderr
    return last_line(done.stdout)


@pytest.fixture
def clean_host(tmp_path, pg, s3, age_keys, prefix):
    runner = OffsiteCli(tmp_path, s3, pg.name)
    offsite_env(runner, s3, age_keys, "prod", OFFSITE_PREFIX=prefix)
    return runner


def test_the_escrowed_identity_opens_the_newest_copy_and_the_drill_is_recorded(
        pushed, clean_host, age_keys, s3, prefix):
    done = clean_host("key-drill", "--env=prod", f"--identity={age_keys.private}")
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout) == pushed
    assert "鍵の訓練 OK" in done.stderr and "平文は削除済み" in done.stderr
    line = worklog(clean_host)[-1]
    assert line["task"] == "key-drill" and line["result"] == "ok", line
    assert line["recipient_fingerprint"] == fingerprint(age_keys.public)
    name = Path(pushed).name.removesuffix(".age")
    assert line["file"] == name
    head = s3.client.head_object(Bucket=BUCKET, Key=f"{prefix}{name}.age")
    assert line["sha256"] == head["Metadata"]["pgrunbook-sha256"]
    assert line["toc_table_data"] > 0 and line["toc_table_data"] == line["manifest_tables"]
    assert "AGE-SECRET-KEY" not in (clean_host.backup_dir("prod") / "worklog.jsonl").read_text()
    # nothing of the plaintext stays: no backup, no scratch folder
    folder = clean_host.backup_dir("prod")
    assert backup_like_files(folder) == []
    assert not list(folder.glob(".key-drill-*"))

    checked = clean_host("check", "--env=prod")
    key_line = next(x for x in checked.stdout.splitlines() if "鍵の訓練:" in x)
    assert key_line.startswith("OK") and fingerprint(age_keys.public) in key_line, key_line
    metrics = samples(clean_host("status", "--env=prod", "--format=prometheus").stdout)
    assert metrics[("pgrunbook_key_drill_last_success", "prod")] == 1.0
    assert metrics[("pgrunbook_key_drill_last_success_timestamp_seconds", "prod")] > 0


def test_a_wrong_identity_is_refused_before_anything_is_downloaded(pushed, clean_host, age_keys, s3, prefix):
    done = clean_host("key-drill", "--env=prod", f"--identity={age_keys.wrong}")
    assert done.returncode == 1
    message = last_line(done.stderr)
    assert "対応しません" in message and "何もダウンロードしていません" in message, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    line = worklog(clean_host)[-1]
    assert line["task"] == "key-drill" and line["result"] == "refused"
    assert backup_like_files(clean_host.backup_dir("prod")) == []

    # refused before the bucket is even asked: a bucket that does not exist is not the reason
    offsite_env(clean_host, s3, age_keys, "prod", OFFSITE_PREFIX=prefix, OFFSITE_BUCKET="pgrunbook-no-such")
    again = clean_host("key-drill", "--env=prod", f"--identity={age_keys.wrong}")
    assert again.returncode == 1 and "対応しません" in again.stderr and "バケット" not in again.stderr

    # a failed drill is the last one: check says NG, status warns (exit 5)
    offsite_env(clean_host, s3, age_keys, "prod", OFFSITE_PREFIX=prefix)
    checked = clean_host("check", "--env=prod")
    key_line = next(x for x in checked.stdout.splitlines() if "鍵の訓練:" in x)
    assert key_line.startswith("NG") and "refused" in key_line, key_line


def test_a_scratch_folder_left_by_a_killed_drill_is_removed(pushed, clean_host, age_keys):
    folder = clean_host.backup_dir("prod")
    left = folder / ".key-drill-killed"
    left.mkdir(parents=True, mode=0o700)
    (left / "knot-prod-20260101-000000.dump.partial").write_bytes(b"PGDMP plaintext")
    done = clean_host("key-drill", "--env=prod", f"--identity={age_keys.private}")
    assert done.returncode == 0, done.stderr
    assert not left.exists()


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime (Debian package) is not installed")
def test_check_and_status_warn_when_the_last_key_drill_is_too_old(pushed, clean_host, age_keys):
    assert clean_host("key-drill", "--env=prod", f"--identity={age_keys.private}").returncode == 0
    assert clean_host("offsite-pull", "--env=prod", f"--key={age_keys.private}").returncode == 0
    assert clean_host("verify", "--env=prod").returncode == 0  # a fresh verified backup here
    fresh = clean_host("status", "--env=prod", "--max-age=400d")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr

    later = at_offset(clean_host, "+200d", "status", "--env=prod", "--max-age=400d")
    # at_offset has no credentials: status reads only files
    assert later.returncode == 5, later.stdout + later.stderr
    assert "鍵の訓練" in later.stdout and "上限 180日" in later.stdout and "invoke key-drill" in later.stdout
    clean_host.write_env("prod", **{**dict(line.split("=", 1) for line in
                                           (clean_host.home / ".env.prod").read_text().splitlines()),
                                    "KEY_DRILL_MAX_AGE": "365d"})
    longer = at_offset(clean_host, "+200d", "status", "--env=prod", "--max-age=400d")
    assert longer.returncode == 0, longer.stdout
    checked = at_offset(clean_host, "+400d", "check", "--env=prod")
    key_line = next(x for x in checked.stdout.splitlines() if "鍵の訓練:" in x)
    assert key_line.startswith("WARN") and "invoke key-drill" in key_line, key_line


@pytest.mark.matrix
def test_the_toc_is_read_whatever_the_version_of_the_dump(pg, s3, age_keys, tmp_path):
    """The host's pg_restore may be older than the server's pg_dump (Debian 12's 15 against a
    17 dump): the drill then reads the table of contents in the DB container."""
    runner = OffsiteCli(tmp_path, s3, pg.name)
    offsite_env(runner, s3, age_keys, "prod", OFFSITE_PREFIX=f"v{pg.major}-{uuid.uuid4().hex[:6]}/")
    assert runner("backup", "--env=prod").returncode == 0
    assert runner("verify", "--env=prod").returncode == 0
    assert runner("offsite-push", "--env=prod").returncode == 0
    done = runner("key-drill", "--env=prod", f"--identity={age_keys.private}")
    assert done.returncode == 0, done.stderr
    line = worklog(runner)[-1]
    assert line["result"] == "ok" and line["toc_table_data"] == line["manifest_tables"] > 0, line
