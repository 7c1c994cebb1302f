"""The runbook's 作業ログ: who did what, when, with which result, as JSON lines."""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pgrunbook.errors import Refused, RunbookError


def operator() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or getpass.getuser()


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def append(path: Path, record: dict[str, Any]) -> None:
    ensure_private_dir(path.parent)
    line = json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


Notifier = Callable[[dict[str, Any]], None]
# env -> name -> what to call with each finished record ("notify", "metrics", ...)
_notifiers: dict[str, dict[str, Notifier]] = {}


def set_notifier(env: str, notifier: Notifier | None, name: str = "notify") -> None:
    """Register what to call with each finished record of an env (see notify.install,
    metrics.install). One callable per (env, name); None removes it."""
    registered = _notifiers.setdefault(env, {})
    if notifier is None:
        registered.pop(name, None)
    else:
        registered[name] = notifier


def _notify(notifier: Notifier | None, record: dict[str, Any]) -> None:
    if notifier is None:
        return
    try:
        notifier(record)
    except Exception as error:  # noqa: BLE001 - a notification never changes the outcome
        sys.stderr.write(f"警告: 通知できませんでした: {type(error).__name__}\n")


@dataclass
class Entry:
    """One task run; fields filled in as the work goes on."""

    task: str
    env: str
    database: str
    container: str
    file: str | None = None
    sha256: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def append_started(log_path: Path, entry: Entry, stage: str) -> None:
    """A line written before an irreversible step: a run killed there (kill -9,
    power cut) is still visible in the log, as "started" with no end."""
    record = {
        "time": now_iso(), "operator": operator(), "host": socket.gethostname(),
        "task": entry.task, "env": entry.env, "container": entry.container,
        "database": entry.database, "file": entry.file, "sha256": entry.sha256,
        "result": "started", "stage": stage, "pid": os.getpid(),
    }
    for key, value in entry.details.items():
        record.setdefault(key, value)
    append(log_path, record)


@contextmanager
def recorded(
    log_path: Path, entry: Entry, redact=lambda text: text, notify: Notifier | None = None
) -> Iterator[Entry]:
    """Append one line for the run, whatever its outcome, then re-raise failures.

    Then notify: ``notify`` if given, else everything registered for the
    entry's env (the CLI registers the NOTIFY_* notifier and the METRICS_FILE
    writer per env), in the order registered.
    """
    started = time.monotonic()
    started_at = now_iso()
    result, error_text = "ok", None
    try:
        yield entry
    except Refused as error:
        result, error_text = "refused", error.one_line()
        raise
    except RunbookError as error:
        result, error_text = "failed", error.one_line()
        raise
    except KeyboardInterrupt:
        result, error_text = "interrupted", "中断されました"
        raise
    except SystemExit as error:
        result, error_text = "interrupted", f"終了シグナル ({error.code})"
        raise
    except Exception as error:
        result, error_text = "failed", f"{type(error).__name__}: {error}"
        raise
    finally:
        record = {
            "time": started_at,
            "operator": operator(),
            "host": socket.gethostname(),
            "task": entry.task,
            "env": entry.env,
            "container": entry.container,
            "database": entry.database,
            "file": entry.file,
            "sha256": entry.sha256,
            "result": result,
            "error": redact(error_text) if error_text else None,
            "duration_seconds": round(time.monotonic() - started, 3),
        }
        for key, value in entry.details.items():
            record.setdefault(key, redact(value) if isinstance(value, str) else value)
        append(log_path, record)
        listeners = [notify] if notify else list(_notifiers.get(entry.env, {}).values())
        for listener in listeners:
            _notify(listener, record)
