"""Notifications: a webhook on 127.0.0.1 and a command, through the real CLI."""

from __future__ import annotations

import json
import shlex
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import PASSWORD


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "type": self.headers["Content-Type"], "body": body})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/secret-token", received
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

NO_PROXY = {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


def test_failing_backup_calls_the_webhook_with_the_error(cli, pg, webhook):
    url, received = webhook
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                  NOTIFY_WEBHOOK_URL=url)
    ok = cli("backup", "--env=prod", env=NO_PROXY)
    assert ok.returncode == 0, ok.stderr
    assert received == []  # success is quiet unless NOTIFY_ON_SUCCESS=true

    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="no_such_db", DB_PASSWORD=PASSWORD,
                  NOTIFY_WEBHOOK_URL=url)
    failed = cli("backup", "--env=prod", env=NO_PROXY)
    assert failed.returncode == 1 and "no_such_db" in failed.stderr
    assert len(received) == 1
    request = received[0]
    assert request["path"] == "/hooks/secret-token"
    assert request["type"].startswith("application/json")
    message = json.loads(request["body"])
    assert message["result"] == "failed" and message["task"] == "backup" and message["env"] == "prod"
    assert "no_such_db" in message["error"] and "no_such_db" in message["summary"]
    assert PASSWORD.encode() not in request["body"]


def test_success_notifies_the_command_and_a_dead_webhook_is_only_a_warning(cli, pg, tmp_path):
    out = tmp_path / "notified.json"
    script = tmp_path / "notify hook.py"  # a space: the command is split like a shell would
    script.write_text("import json, os, sys\n"
                      "open(sys.argv[1], 'w').write(json.dumps({'stdin': sys.stdin.read(), "
                      "'env': dict(os.environ)}))\n")
    command = shlex.join([sys.executable, str(script), str(out)])
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                  NOTIFY_ON_SUCCESS="true", NOTIFY_COMMAND=command,
                  NOTIFY_WEBHOOK_URL=f"http://127.0.0.1:{closed_port()}/hook")
    result = cli("backup", "--env=prod", env={**NO_PROXY, "PGRUNBOOK_PROD_DB_PASSWORD": PASSWORD})
    assert result.returncode == 0, result.stderr
    assert "Webhook" in result.stderr and "警告" in result.stderr
    assert "/hook" not in result.stderr  # the webhook's path may be its token
    written = json.loads(out.read_text())
    message = json.loads(written["stdin"])
    assert message["result"] == "ok" and message["file"] == result.stdout.strip().splitlines()[-1]
    assert PASSWORD not in out.read_text()


def test_a_failing_command_does_not_change_the_exit_code(cli, pg):
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                  NOTIFY_ON_SUCCESS="true", NOTIFY_COMMAND="false")
    result = cli("backup", "--env=prod")
    assert result.returncode == 0, result.stderr
    assert "通知コマンド false" in result.stderr
    cli.write_env("prod", DB_CONTAINER=pg.name, NOTIFY_WEBHOOK_URL="ftp://example.invalid/x")
    bad = cli("backup", "--env=prod")
    assert bad.returncode == 2 and "NOTIFY_WEBHOOK_URL" in bad.stderr
