"""Notifications: one JSON message per task run, to a command and/or a webhook.

Called from one place, ``worklog.recorded``: every task that writes a work-log
line notifies, on failure always and on success when NOTIFY_ON_SUCCESS=true.
The message is the work-log record (already redacted) plus a one-line
summary; known secrets are masked once more in the final JSON text.

A notification that fails is a warning on stderr: it never changes the
task's outcome or exit code. The command is split with ``shlex`` and run
without a shell, with the JSON on stdin and no password variables in its
environment; the webhook is a plain POST with a short timeout.

NOTIFY_FORMAT shapes the webhook's body (the command always gets the generic
JSON): ``generic`` (the record + summary), ``slack`` (``{"text": ...}``, which
Slack's incoming webhooks, Mattermost and Rocket.Chat accept) or ``teams``
(a Microsoft Teams Workflows message with one Adaptive Card). Chat formats
carry the summary, env, task, file and the repair hint (the part of the
one-line error after "→").
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pgrunbook import __version__
from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.settings import Settings

COMMAND_TIMEOUT = 30
WEBHOOK_TIMEOUT = 10
RESULT_WORDS = {"ok": "成功", "failed": "失敗", "interrupted": "中断", "refused": "拒否",
                "suspect": "要確認（内容が急に減った・別の DB）"}


def wanted(settings: Settings, record: dict[str, Any]) -> bool:
    if not (settings.notify_command or settings.notify_webhook_url):
        return False
    return record.get("result") != "ok" or settings.notify_on_success


def message(record: dict[str, Any]) -> dict[str, Any]:
    result = str(record.get("result"))
    summary = (
        f"[pgrunbook] {record.get('host') or socket.gethostname()} env={record.get('env')} "
        f"{record.get('task')}: {RESULT_WORDS.get(result, result)}"
    )
    if record.get("error"):
        summary += f" — {record['error']}"
    elif record.get("suspect_reasons"):
        summary += " — " + "; ".join(str(r) for r in record["suspect_reasons"])
    elif record.get("file"):
        summary += f" — {record['file']}"
    return {"source": "pgrunbook", "kit_version": __version__, "summary": summary, **record}


def repair_hint(record: dict[str, Any]) -> str:
    """What to do, from the one-line error ("エラー: what → what to do")."""
    error = str(record.get("error") or "")
    return error.split(" → ", 1)[1].strip() if " → " in error else ""


def _facts(record: dict[str, Any]) -> list[tuple[str, str]]:
    result = str(record.get("result"))
    facts = [
        ("環境", str(record.get("env"))),
        ("タスク", str(record.get("task"))),
        ("結果", RESULT_WORDS.get(result, result)),
        ("ファイル", str(record.get("file") or "—")),
        ("ホスト", str(record.get("host") or socket.gethostname())),
    ]
    if record.get("error"):
        facts.append(("エラー", str(record["error"]).split(" → ", 1)[0]))
    hint = repair_hint(record)
    if hint:
        facts.append(("対処", hint))
    return facts


def slack_message(record: dict[str, Any]) -> dict[str, Any]:
    """Slack incoming webhook; Mattermost and Rocket.Chat take the same ``text``."""
    lines = [message(record)["summary"]] + [f"{name}: {value}" for name, value in _facts(record)]
    return {"text": "\n".join(lines)}


def teams_message(record: dict[str, Any]) -> dict[str, Any]:
    """A Teams Workflows ("Post to a channel when a webhook request is received") message."""
    failed = record.get("result") != "ok"
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": message(record)["summary"], "wrap": True,
             "weight": "Bolder", "color": "Attention" if failed else "Good"},
            {"type": "FactSet",
             "facts": [{"title": name, "value": value} for name, value in _facts(record)]},
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
             "content": card},
        ],
    }


FORMATTERS = {"generic": message, "slack": slack_message, "teams": teams_message}


def encoded(record: dict[str, Any], console: Console, notify_format: str = "generic") -> bytes:
    body = FORMATTERS[notify_format](record)
    return console.redact(json.dumps(body, ensure_ascii=False)).encode("utf-8")


def send(settings: Settings, record: dict[str, Any], console: Console) -> None:
    """Deliver one record; every failure becomes a warning."""
    if not wanted(settings, record):
        return
    if settings.notify_command:
        _run_command(settings.notify_command, encoded(record, console), console)
    if settings.notify_webhook_url:
        _post(settings.notify_webhook_url, encoded(record, console, settings.notify_format), console)


def _clean_environment() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key != "PGPASSWORD" and not (key.startswith("PGRUNBOOK_") and key.endswith("_PASSWORD"))
    }


def _run_command(command: str, body: bytes, console: Console) -> None:
    try:
        argv = shlex.split(command)
    except ValueError as error:
        console.warn(f"NOTIFY_COMMAND を解釈できません（{error}）: 通知しませんでした")
        return
    if not argv:
        return
    try:
        done = subprocess.run(
            argv, input=body, capture_output=True, timeout=COMMAND_TIMEOUT,
            env=_clean_environment(), check=False,
        )
    except FileNotFoundError:
        console.warn(f"通知コマンド {argv[0]} が見つかりません: 通知しませんでした")
        return
    except subprocess.TimeoutExpired:
        console.warn(f"通知コマンド {argv[0]} が {COMMAND_TIMEOUT} 秒で終わりませんでした")
        return
    except OSError as error:
        console.warn(f"通知コマンド {argv[0]} を実行できません: {error}")
        return
    if done.returncode != 0:
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()
        console.warn(
            f"通知コマンド {argv[0]} が終了コード {done.returncode} で失敗しました"
            + (f": {last[-1]}" if last else "")
        )


def _where(url: str) -> str:
    """Scheme and host only: a webhook's path often is its secret token."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _post(url: str, body: bytes, console: Console) -> None:
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json; charset=utf-8",
                 "User-Agent": f"pgrunbook/{__version__}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
            response.read(1024)
    except urllib.error.HTTPError as error:
        console.warn(f"Webhook（{_where(url)}）への通知が HTTP {error.code} で失敗しました")
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        console.warn(f"Webhook（{_where(url)}）へ通知できませんでした: {reason}")


def install(settings: Settings, console: Console) -> None:
    """Make every work-log line of this env's tasks notify (called by cli.settings_for)."""
    worklog.set_notifier(settings.env, lambda record: send(settings, record, console))
