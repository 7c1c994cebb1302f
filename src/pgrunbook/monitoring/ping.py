"""Dead-man's-switch pings (healthchecks.io, Uptime Kuma) for the scheduled jobs.

The crontab wraps the daily backup job when PING_URL is set::

    invoke ping --env=E --start; <job>; invoke ping --env=E --exit-code=$? --since=<epoch>

so the check hears ``/start`` when the job begins, the base URL when it
ended well, and ``/fail`` with the one-line error when it did not; a job that
never runs (cron stopped, the crontab lost, the host down) sends nothing and
the service raises the alarm itself. The final ping exits with the job's exit
code: pinging never changes the outcome, and a ping that cannot be delivered
(after a few short tries) is only a warning.

Two URL styles:

* healthchecks.io and compatible (self-hosted Healthchecks): ``<url>/start``,
  ``<url>``, ``<url>/fail`` (the error as the request body, which the
  service shows in the check's log);
* Uptime Kuma push monitors (a path with ``/api/push/``):
  ``?status=up&msg=…`` / ``?status=down&msg=…``; Kuma has no start signal.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from pgrunbook import __version__
from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings

TIMEOUT = 5  # seconds per try: a slow monitoring service must not hold the backup host
ATTEMPTS = 3
BACKOFF = (1.0, 2.0)  # seconds to wait before the second and third try
MESSAGE_LIMIT = 1000  # characters of the error sent with /fail
EVENTS = ("start", "success", "fail")


def kuma_style(url: str) -> bool:
    return "/api/push/" in urllib.parse.urlsplit(url).path


def where(url: str) -> str:
    """Scheme and host only: the path of a ping URL is the check's secret."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def request_for(url: str, event: str, message: str = "") -> urllib.request.Request | None:
    """The HTTP request for one event, or None when the style has no such signal."""
    headers = {"User-Agent": f"pgrunbook/{__version__}"}
    if kuma_style(url):
        if event == "start":
            return None
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.urlencode({
            "status": "up" if event == "success" else "down",
            "msg": message or ("OK" if event == "success" else "失敗"),
            "ping": "",
        })
        return urllib.request.Request(
            urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")),
            headers=headers, method="GET",
        )
    base = url.rstrip("/")
    if event == "start":
        return urllib.request.Request(base + "/start", headers=headers, method="GET")
    if event == "success":
        return urllib.request.Request(base, headers=headers, method="GET")
    return urllib.request.Request(
        base + "/fail", data=message.encode("utf-8"), method="POST",
        headers={**headers, "Content-Type": "text/plain; charset=utf-8"},
    )


def send(url: str, event: str, message: str, console: Console,
         sleep: Callable[[float], None] = time.sleep) -> bool:
    """Deliver one ping with a few short tries; False (and a warning) when it could not."""
    request = request_for(url, event, message)
    if request is None:
        return True
    reason = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            sleep(BACKOFF[min(attempt - 1, len(BACKOFF) - 1)])
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                response.read(1024)
            return True
        except urllib.error.HTTPError as error:
            reason = f"HTTP {error.code}"
            if error.code < 500 and error.code != 429:
                break  # a wrong URL does not get better by asking again
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = str(getattr(error, "reason", error))
    console.warn(f"死活監視の ping（{event}）を {where(url)} に送れませんでした: {reason}"
                 "（タスクの結果は変わりません。PING_URL と到達性を確認）")
    return False


def failure_message(settings: Settings, exit_code: int, since: float | None) -> str:
    """The one-line error of the job's failed task, from the work log (lines since ``since``)."""
    if since is not None:
        for record in reversed(worklog.read(settings.worklog_path)):
            started = worklog.started_at(record)
            if started is None or started < since:
                break
            if record.get("env") == settings.env and record.get("result") != "ok":
                return f"{record.get('task')}: {record.get('error') or record.get('result')}"
    return (f"終了コード {exit_code}（作業ログに失敗の記録がありません。"
            f"{settings.backup_dir / 'cron.log'} を確認）")


def parse_exit_code(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        code = int(text)
    except ValueError:
        code = -1
    if not 0 <= code <= 255:
        raise RunbookError(f"--exit-code={text!r} は 0〜255 の整数で指定してください",
                           "crontab では --exit-code=$? と書く", exit_code=2)
    return code


def parse_since(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise RunbookError(f"--since={text!r} は UNIX 時刻（秒）で指定してください",
                           "crontab では --since=$(date +%s) の値を渡す", exit_code=2) from None


def run(settings: Settings, console: Console, *, start: bool = False, exit_code: str | None = None,
        since: str | None = None, message: str | None = None) -> int:
    """The ``ping`` task: returns the exit code to end with (the job's, unchanged)."""
    code = parse_exit_code(exit_code)
    started = parse_since(since)
    if start and code is not None:
        raise RunbookError("--start と --exit-code は同時に指定できません",
                           "開始時は --start、終了時は --exit-code=$?", exit_code=2)
    if not settings.ping_url:
        console.step("PING_URL が空なので ping は送りません")
        return code or 0
    if start:
        event, text = "start", ""
    elif not code:
        event, text = "success", message or ""
    else:
        event = "fail"
        text = message or failure_message(settings, code, started)
    text = " ".join(console.redact(text).split())[:MESSAGE_LIMIT]
    if send(settings.ping_url, event, text, console):
        console.step(f"死活監視に {event} を送りました（{where(settings.ping_url)}）")
    return code or 0
