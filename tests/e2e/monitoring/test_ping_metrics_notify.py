"""Monitoring (issue 13): pings, Prometheus metrics, chat formats, through the real CLI.

Every HTTP server here listens on 127.0.0.1; the backups run against the real
test container.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import PASSWORD, Cli, last_line, samples
from helpers.loopback_http import NO_PROXY, Recorder, SilentServer
from pgrunbook.monitoring import ping


@pytest.fixture
def server():
    recorder = Recorder().start()
    yield recorder
    recorder.stop()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job_line(printed: str, first_word: str) -> tuple[dict[str, str], str]:
    """The block's environment lines and one job's command, as cron would run it."""
    environment: dict[str, str] = {}
    command = ""
    for line in printed.splitlines():
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep and " " not in key:
            environment[key] = value
            continue
        fields = line.split(None, 5)
        if f"invoke {first_word} " in fields[5] or f"invoke {first_word}" == fields[5]:
            command = fields[5]
            break
    assert command, printed
    # cron turns an unescaped % into a newline and \% into %
    return environment, command.replace("\\%", "%")


def run_like_cron(environment: dict[str, str], command: str, timeout: float = 300):
    base = {"HOME": os.environ.get("HOME", "/root"), "LOGNAME": "root", **NO_PROXY}
    return subprocess.run([environment.get("SHELL", "/bin/sh"), "-c", command],
                          env={**base, **environment}, capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def test_the_printed_backup_job_pings_start_success_and_fail_with_the_error(cli, pg, server):
    token = "/ping/5c2f0d7e-secret"
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                  PING_URL=server.base + token)
    printed = cli("crontab", "--env=prod", "--mailto=")
    assert printed.returncode == 0, printed.stderr
    assert "invoke ping --env=prod --start" in printed.stdout
    environment, command = job_line(printed.stdout, "backup")
    assert not cli.backup_dir("prod").exists()  # a fresh checkout: the job makes its folder

    ok = run_like_cron(environment, command)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout == ""  # success is quiet: nothing for cron to mail
    assert server.paths() == [token + "/start", token]
    assert oct(cli.backup_dir("prod").stat().st_mode & 0o777) == "0o700"
    log = (cli.backup_dir("prod") / "cron.log").read_text()
    assert "backup+verify" in log and ".dump" in log

    server.requests.clear()
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="no_such_db", DB_PASSWORD=PASSWORD,
                  PING_URL=server.base + token)
    failed = run_like_cron(environment, command)
    # the job's failure passed through the final ping: the line printed the log's tail,
    # which cron mails (the line's own status is tail's, as without pings)
    assert "no_such_db" in failed.stdout and "== " in failed.stdout
    assert server.paths() == [token + "/start", token + "/fail"]
    fail = server.requests[-1]
    assert fail.method == "POST" and fail.content_type.startswith("text/plain")
    text = fail.body.decode("utf-8")
    assert text.startswith("backup: エラー:") and "no_such_db" in text and "\n" not in text
    assert PASSWORD not in text


def test_a_ping_is_retried_and_never_changes_the_exit_code(tmp_path, server):
    cli = Cli(tmp_path)
    token = "/hc/abc-secret-token"
    cli.write_env("prod", DB_CONTAINER="knot-db", PING_URL=server.base + token)
    server.statuses = [500]  # the first try fails, the second gets through
    failed = cli("ping", "--env=prod", "--exit-code=3", "--message=手動の試験", env=NO_PROXY)
    assert failed.returncode == 3, failed.stderr
    assert server.paths() == [token + "/fail", token + "/fail"]
    assert server.requests[-1].body.decode() == "手動の試験"
    assert "警告" not in failed.stderr

    # no failed work-log line since the job began: the exit code and where to look
    server.requests.clear()
    fallback = cli("ping", "--env=prod", "--exit-code=1", f"--since={int(time.time())}", env=NO_PROXY)
    assert fallback.returncode == 1
    assert "終了コード 1" in server.requests[-1].body.decode() and "cron.log" in server.requests[-1].body.decode()

    server.statuses = [404]  # a wrong check is not asked again
    server.requests.clear()
    start = cli("ping", "--env=prod", "--start", env=NO_PROXY)
    assert start.returncode == 0 and "警告" in start.stderr and "HTTP 404" in start.stderr
    assert server.paths() == [token + "/start"]

    cli.write_env("prod", DB_CONTAINER="knot-db", PING_URL=f"http://127.0.0.1:{closed_port()}{token}")
    dead = cli("ping", "--env=prod", "--exit-code=0", env=NO_PROXY)
    assert dead.returncode == 0 and "警告" in dead.stderr and "死活監視" in dead.stderr
    assert "secret" not in dead.stderr  # the URL's path is the check's token

    # a service that accepts and never answers: a few short tries, each given up, never a hang
    hung = SilentServer()
    try:
        cli.write_env("prod", DB_CONTAINER="knot-db", PING_URL=f"http://127.0.0.1:{hung.port}{token}")
        silent = cli("ping", "--env=prod", "--exit-code=0", env=NO_PROXY, timeout=120)
        assert silent.returncode == 0 and "警告" in silent.stderr and "死活監視" in silent.stderr
        assert len(hung.connections) == ping.ATTEMPTS
    finally:
        hung.close()

    bad = cli("ping", "--env=prod", "--exit-code=x")
    assert bad.returncode == 2 and "--exit-code" in bad.stderr


def test_uptime_kuma_push_urls_get_status_up_and_down(tmp_path, server):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db",
                  PING_URL=server.base + "/api/push/Kt0ken?status=up&msg=OK&ping=")
    assert cli("ping", "--env=prod", "--start", env=NO_PROXY).returncode == 0
    assert server.requests == []  # Kuma has no start signal
    assert cli("ping", "--env=prod", "--exit-code=0", env=NO_PROXY).returncode == 0
    assert cli("ping", "--env=prod", "--exit-code=2", "--message=壊れた", env=NO_PROXY).returncode == 2
    up, down = server.requests
    assert up.path == down.path == "/api/push/Kt0ken"
    assert up.query["status"] == ["up"] and down.query["status"] == ["down"]
    assert down.query["msg"] == ["壊れた"]


def test_without_ping_url_the_block_has_no_ping_and_ping_does_nothing(tmp_path):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db")
    printed = cli("crontab", "--env=prod")
    assert printed.returncode == 0 and "invoke ping" not in printed.stdout and " ping " not in printed.stdout
    assert cli("ping", "--env=prod", "--exit-code=4").returncode == 4


def test_monitoring_settings_are_checked(tmp_path):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db", NOTIFY_FORMAT="discord")
    result = cli("status", "--env=prod")
    assert result.returncode == 2 and "NOTIFY_FORMAT" in result.stderr and "slack" in result.stderr
    cli.write_env("prod", DB_CONTAINER="knot-db", METRICS_FILE="pgrunbook.txt")
    result = cli("status", "--env=prod")
    assert result.returncode == 2 and ".prom" in result.stderr
    cli.write_env("prod", DB_CONTAINER="knot-db", PING_URL="hc-ping.invalid/x")
    result = cli("status", "--env=prod")
    assert result.returncode == 2 and "PING_URL" in result.stderr
    cli.write_env("prod", DB_CONTAINER="knot-db")
    (tmp_path / ".env").write_text("PING_URL=http://127.0.0.1:9/one-check-for-all\n")
    result = cli("status", "--env=prod")
    assert result.returncode == 2 and "PING_URL" in result.stderr and ".env" in result.stderr


def test_metrics_file_follows_every_task_and_status_prints_the_same(cli, pg, tmp_path):
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    metrics_file = textfile / "pgrunbook.prom"
    (tmp_path / ".env").write_text(f"METRICS_FILE={metrics_file}\n")  # one file for every env

    empty = cli("status", "--env=dev", "--format=prometheus")
    assert empty.returncode == 0, empty.stderr
    before = samples(empty.stdout)
    assert before[("pgrunbook_backups", "prod")] == 0 and before[("pgrunbook_backups", "dev")] == 0
    assert before[("pgrunbook_backup_last_verified_timestamp_seconds", "prod")] == 0
    assert before[("pgrunbook_backup_last_success", "prod")] == 0

    began = time.time()
    backup = cli("backup", "--env=prod")
    assert backup.returncode == 0, backup.stderr
    path = Path(last_line(backup.stdout))
    after_backup = samples(metrics_file.read_text())
    assert after_backup[("pgrunbook_backups", "prod")] == 1
    assert after_backup[("pgrunbook_backup_last_success", "prod")] == 1
    assert after_backup[("pgrunbook_backup_last_size_bytes", "prod")] == path.stat().st_size
    assert began - 2 <= after_backup[("pgrunbook_backup_last_timestamp_seconds", "prod")] <= time.time() + 1
    assert after_backup[("pgrunbook_backup_last_duration_seconds", "prod")] > 0
    assert after_backup[("pgrunbook_backup_last_verified_timestamp_seconds", "prod")] == 0
    assert after_backup[("pgrunbook_backups", "dev")] == 0  # the other env of the same file

    verify = cli("verify", "--env=prod", "--restore-test")
    assert verify.returncode == 0, verify.stderr
    verified = samples(metrics_file.read_text())
    assert verified[("pgrunbook_backups_verified", "prod")] == 1
    created = verified[("pgrunbook_backup_last_verified_timestamp_seconds", "prod")]
    assert abs(created - after_backup[("pgrunbook_backup_last_timestamp_seconds", "prod")]) < 60
    assert verified[("pgrunbook_restore_test_last_success", "prod")] == 1
    assert verified[("pgrunbook_restore_test_last_duration_seconds", "prod")] > 0
    assert verified[("pgrunbook_restore_test_last_timestamp_seconds", "prod")] >= began - 2
    assert before[("pgrunbook_restore_drill_last_success_timestamp_seconds", "prod")] == 0
    # the drill's own line (written after the run's line) reaches the textfile too
    assert verified[("pgrunbook_restore_drill_last_success_timestamp_seconds", "prod")] >= \
        verified[("pgrunbook_restore_test_last_timestamp_seconds", "prod")] - 1
    assert verified[("pgrunbook_backup_last_suspect", "prod")] == 0
    assert sorted(p.name for p in textfile.iterdir()) == ["pgrunbook.prom"]  # no temporary left

    printed = cli("status", "--env=prod", "--format=prometheus")
    assert printed.returncode == 0
    assert samples(printed.stdout) == verified == samples(metrics_file.read_text())

    # a failed run: the result turns 0, the last good size and time stay
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="no_such_db", DB_PASSWORD=PASSWORD)
    assert cli("backup", "--env=prod").returncode == 1
    failed = samples(metrics_file.read_text())
    assert failed[("pgrunbook_backup_last_success", "prod")] == 0
    assert failed[("pgrunbook_backup_last_size_bytes", "prod")] == path.stat().st_size
    assert (failed[("pgrunbook_backup_last_success_timestamp_seconds", "prod")]
            == verified[("pgrunbook_backup_last_success_timestamp_seconds", "prod")])

    # a manifest marked suspect (issue 12's field) shows as a gauge; status refreshes the file
    manifest = path.with_name(path.name + ".json")
    data = json.loads(manifest.read_text())
    data["suspect"] = True
    data["drift"] = {"findings": [{"kind": "table_drop", "message": "public.orders: 1,000 行 → 100 行",
                                   "table": "public.orders", "before": 1000, "after": 100}]}
    manifest.write_text(json.dumps(data))
    # a suspect backup is not trusted as the newest good one: status is no longer OK
    assert cli("status", "--env=prod").returncode != 0
    suspect = samples(metrics_file.read_text())
    assert suspect[("pgrunbook_backup_last_suspect", "prod")] == 1
    assert suspect[("pgrunbook_backups_suspect", "prod")] == 1


def test_metrics_never_change_a_task_outcome(cli, pg, tmp_path):
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                  METRICS_FILE=str(tmp_path / "missing-folder" / "pgrunbook.prom"))
    backup = cli("backup", "--env=prod")
    assert backup.returncode == 0, backup.stderr
    assert "警告" in backup.stderr and "METRICS_FILE" in backup.stderr and "missing-folder" in backup.stderr
    assert not (tmp_path / "missing-folder").exists()


def failing_backup(tmp_path: Path, url: str, notify_format: str | None) -> Cli:
    cli = Cli(tmp_path)
    values = {"DB_CONTAINER": "pgrunbook-mon13-no-such-container", "NOTIFY_WEBHOOK_URL": url}
    if notify_format:
        values["NOTIFY_FORMAT"] = notify_format
    cli.write_env("prod", **values)
    result = cli("backup", "--env=prod", env=NO_PROXY)
    assert result.returncode == 1 and "pgrunbook-mon13-no-such-container" in result.stderr
    return cli


@pytest.mark.parametrize("notify_format", [None, "generic"])
def test_generic_json_stays_the_default(docker_engine, tmp_path, server, notify_format):
    failing_backup(tmp_path, server.base + "/hook", notify_format)
    (request,) = server.requests
    message = json.loads(request.body)
    assert request.content_type.startswith("application/json")
    assert message["source"] == "pgrunbook" and message["result"] == "failed" and message["env"] == "prod"
    assert "summary" in message and "error" in message


def test_slack_format_is_a_text_message(docker_engine, tmp_path, server):
    failing_backup(tmp_path, server.base + "/services/T000/B000/XXXX", "slack")
    (request,) = server.requests
    assert request.path == "/services/T000/B000/XXXX"
    message = json.loads(request.body)
    assert list(message) == ["text"]  # what Slack, Mattermost and Rocket.Chat all accept
    lines = message["text"].splitlines()
    assert lines[0].startswith("[pgrunbook] ") and "env=prod backup: 失敗" in lines[0]
    assert "環境: prod" in lines and "タスク: backup" in lines and "ファイル: —" in lines
    assert any(line.startswith("対処: ") and len(line) > len("対処: ") for line in lines), lines


def test_teams_format_is_an_adaptive_card_in_a_message(docker_engine, tmp_path, server):
    failing_backup(tmp_path, server.base + "/workflows/trigger?api-version=2016-06-01&sig=x", "teams")
    (request,) = server.requests
    message = json.loads(request.body)
    assert message["type"] == "message"
    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4" and "$schema" in card
    title, facts = card["body"]
    assert title["type"] == "TextBlock" and title["wrap"] is True and title["color"] == "Attention"
    assert "env=prod backup: 失敗" in title["text"]
    assert facts["type"] == "FactSet"
    named = {fact["title"]: fact["value"] for fact in facts["facts"]}
    assert named["環境"] == "prod" and named["タスク"] == "backup" and named["ファイル"] == "—"
    assert "pgrunbook-mon13-no-such-container" in named["エラー"] and named["対処"]


def test_chat_formats_carry_the_file_of_a_success(cli, pg, server):
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                  NOTIFY_WEBHOOK_URL=server.base + "/hook", NOTIFY_FORMAT="slack",
                  NOTIFY_ON_SUCCESS="true")
    result = cli("backup", "--env=prod", env=NO_PROXY)
    assert result.returncode == 0, result.stderr
    text = json.loads(server.requests[-1].body)["text"]
    assert f"ファイル: {last_line(result.stdout)}" in text.splitlines() and "成功" in text
    assert PASSWORD not in text


def test_without_the_metrics_extra_status_says_what_to_install(tmp_path):
    cli = Cli(tmp_path)
    shadow = tmp_path / "no-extra" / "prometheus_client"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    cli.write_env("prod", DB_CONTAINER="knot-db", METRICS_FILE=str(tmp_path / "pgrunbook.prom"))
    hidden = {"PYTHONPATH": str(shadow.parent)}
    printed = cli("status", "--env=prod", "--format=prometheus", env=hidden)
    assert printed.returncode == 2 and printed.stdout == ""
    assert "prometheus-client" in printed.stderr and ".[metrics]" in printed.stderr
    assert "Traceback" not in printed.stderr
    plain = cli("status", "--env=prod", env=hidden)  # the freshness line still works
    assert plain.returncode == 2 and plain.stdout.startswith("CRITICAL")
    assert "警告" in plain.stderr and ".[metrics]" in plain.stderr
    assert not (tmp_path / "pgrunbook.prom").exists()
