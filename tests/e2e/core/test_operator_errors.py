"""Failures an operator can cause: one clear line, nonzero exit, nothing that looks like a backup."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from helpers import IMAGE, PASSWORD, ROOT, backup_like_files

KILL_PG_DUMP = (
    "for p in /proc/[0-9]*; do "
    "if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^pg_dump '; then kill -9 ${p#/proc/}; fi; "
    "done"
)


def assert_clean_failure(result, directory, *words):
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert error_lines, "no message"
    assert error_lines[-1].startswith("エラー: "), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert backup_like_files(directory) == []
    assert PASSWORD not in result.stdout + result.stderr


def test_wrong_container_lists_the_running_ones(cli, pg):
    cli.write_env("prod", DB_CONTAINER="knot-db-typo", DB_PASSWORD=PASSWORD)
    result = cli("backup", "--env=prod")
    assert_clean_failure(result, cli.backup_dir("prod"), "knot-db-typo", "見つかりません", pg.name)


def test_stopped_container(cli, pg, docker_engine):
    name = f"pgrunbook-stopped-{uuid.uuid4().hex[:6]}"
    stopped = docker_engine.containers.create(IMAGE, name=name, network_mode="none")
    try:
        cli.write_env("prod", DB_CONTAINER=name, DB_PASSWORD=PASSWORD)
        result = cli("backup", "--env=prod")
        assert_clean_failure(result, cli.backup_dir("prod"), "停止", f"docker start {name}")
    finally:
        stopped.remove(force=True)


def test_wrong_database(cli, pg):
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="no_such_db", DB_PASSWORD=PASSWORD)
    result = cli("backup", "--env=prod")
    assert_clean_failure(result, cli.backup_dir("prod"), "no_such_db", "DB_NAME")


def test_wrong_password_does_not_echo_it(cli, pg):
    wrong = "Wrong-Marker-5d1e"
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_PASSWORD=wrong)
    result = cli("backup-sql", "--env=prod")
    assert_clean_failure(result, cli.backup_dir("prod"), "パスワード", "DB_PASSWORD")
    assert wrong not in result.stdout + result.stderr
    assert wrong not in (cli.backup_dir("prod") / "worklog.jsonl").read_text()


def test_unknown_and_missing_env(cli):
    missing = cli("backup")
    assert missing.returncode == 2 and "--env" in missing.stderr and "dev, prod" in missing.stderr
    unknown = cli("backup", "--env=prdo")
    assert unknown.returncode == 2 and "prod" in unknown.stderr and "dev, prod" in unknown.stderr
    assert not (cli.home / "backups").exists()


def test_process_environment_does_not_redirect_a_task(cli, pg):
    result = cli("backup", "--env=prod", env={"DB_NAME": "app_dev", "DB_CONTAINER": "elsewhere",
                                               "BACKUP_DIR": "/tmp/elsewhere"})
    assert result.returncode == 0, result.stderr
    manifest = json.loads(open(result.stdout.strip().splitlines()[-1] + ".json").read())
    assert manifest["database"] == "app" and manifest["container"] == pg.name


def test_pg_dump_killed_mid_stream_leaves_no_backup(cli, pg):
    pg.psql('DROP DATABASE IF EXISTS "bigdb" WITH (FORCE)', "postgres")
    pg.psql('CREATE DATABASE "bigdb"', "postgres")
    pg.psql("CREATE TABLE big AS SELECT g AS id, md5(random()::text) || md5(random()::text) "
            "|| md5(random()::text) || md5(random()::text) || md5(random()::text) "
            "|| md5(random()::text) AS payload FROM generate_series(1, 250000) AS g", "bigdb")
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="bigdb", DB_PASSWORD=PASSWORD,
                  DUMP_COMPRESSION="9", ROW_COUNTS="false")
    directory = cli.backup_dir("prod")
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "backup", "--env=prod"],
        cwd=cli.home, env={**__import__("os").environ, "PGRUNBOOK_HOME": str(cli.home)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline and process.poll() is None:
        partial = list(directory.glob("*.partial")) if directory.exists() else []
        if partial and partial[0].stat().st_size > 0:
            pg.exec(["sh", "-c", KILL_PG_DUMP])
            killed = True
            break
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=60)
    assert killed, "pg_dump finished before it could be killed; make the data larger"
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert_clean_failure(result, directory, "pg_dump")
    log = [json.loads(x) for x in (directory / "worklog.jsonl").read_text().splitlines()]
    assert log[-1]["result"] == "failed"
    pg.psql('DROP DATABASE "bigdb" WITH (FORCE)', "postgres")


def test_no_docker_engine(cli, tmp_path):
    result = cli("backup", "--env=prod", env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert_clean_failure(result, cli.backup_dir("prod"), "Docker Engine に接続できません")


def test_a_held_lock_fails_the_backup_after_the_timeout_instead_of_hanging(cli, pg):
    pg.hold_table_lock("public.votes", 8)
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                  DUMP_LOCK_WAIT_TIMEOUT="1s", ROW_COUNTS="false")
    result = cli("backup", "--env=prod")
    assert_clean_failure(result, cli.backup_dir("prod"), "pg_dump", "ロック", "DUMP_LOCK_WAIT_TIMEOUT")
