"""What a restore-replace or rollback is doing right now, on the host.

Written before each step that changes something (the staging database, the
upload, each app container stopped, the swap) and removed when the run ends
in a state it has put right itself. A file that outlives its process is what
a ``kill -9``, an OOM kill or a power cut left: every task of the env prints
one line about it and ``invoke restore-recover`` repairs it (restore/recover.py).
Kept light (no Docker import): the notice runs at every task's start.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from pgrunbook.core.errors import Refused
from pgrunbook.core.files import ensure_private_dir, write_private
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import now_iso, operator

NAME = ".restore-in-progress.json"


def path_of(settings: Settings) -> Path:
    return settings.backup_dir / NAME


class Journal:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def begin(cls, settings: Settings, task: str, **fields: Any) -> Journal:
        data = {
            "task": task, "env": settings.env, "database": settings.db_name,
            "container": settings.db_container, "pid": os.getpid(), "host": socket.gethostname(),
            "boot_id": boot_id(), "process_started": process_started(os.getpid()),
            "operator": operator(), "started_at": now_iso(), "stage": "start",
            "apps_stopped": [], **fields,
        }
        journal = cls(path_of(settings), data)
        if journal.path.exists():  # never over another run's record (the caller checked, under its locks)
            refuse_unfinished(settings, read(settings) or {})
        journal._write()
        return journal

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self._write()

    def app_stopping(self, name: str) -> None:
        """Before the stop: an interrupted stop is still restarted by the recovery."""
        if name not in self.data["apps_stopped"]:
            self.data["apps_stopped"].append(name)
        self._write()

    def app_started(self, name: str) -> None:
        """Once an app the run stopped runs again: the journal lists only those still stopped."""
        if name in self.data["apps_stopped"]:
            self.data["apps_stopped"].remove(name)
            self._write()

    @property
    def apps_stopped(self) -> list[str]:
        return list(self.data["apps_stopped"])

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)

    def close(self, settled: bool) -> bool:
        """Remove the journal once the run has put right all it did (``settled``) and every
        app it stopped runs again; else keep it for restore-recover. True when removed."""
        if settled and not self.data["apps_stopped"]:
            self.finish()
            return True
        return False

    def _write(self) -> None:
        ensure_private_dir(self.path.parent)
        write_private(self.path, json.dumps(self.data, ensure_ascii=False))


def read(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads(path_of(settings).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"stage": "不明（記録が読めません）", "task": "?"}


def boot_id() -> str | None:
    """This boot of the kernel: a pid written before a reboot means nothing after it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_started(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, /proc/PID/stat field 22): with
    the pid, it names one process; a pid alone is soon reused by another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def running(pid: int, started: str | None) -> bool:
    """Is the process ``pid`` that started at ``started`` (``process_started``) still running
    on this host? Where /proc cannot tell (no /proc: macOS, say, where ``started`` was
    written as None), whether a process of that pid is there at all: a run still going is
    never taken for a dead one."""
    now = process_started(pid)
    if now is not None and started not in (None, "None"):
        return now == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def other_host(data: dict[str, Any]) -> str | None:
    """The host that wrote ``data`` when it is not this one (a shared backup folder, or
    the kit run from a container whose hostname changes)."""
    host = data.get("host")
    return str(host) if host and host != socket.gethostname() else None


def elsewhere_hint(settings: Settings, host: str) -> str:
    return (f"ホスト {host} で invoke restore-recover --env={settings.env} を実行"
            f"（そのホストがもうないなら、このホストで invoke restore-recover --env={settings.env}）")


def is_alive(data: dict[str, Any]) -> bool:
    """Is the run that wrote ``data`` still going here (same host, same process alive)?
    Another host's run: False, this host cannot see it (restore-recover asks the
    server's lock whether any run of the database is going)."""
    if other_host(data):
        return False
    pid = data.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    if data.get("boot_id") and boot_id() and data["boot_id"] != boot_id():
        return False  # written before a reboot (a power cut): that process is gone
    if data.get("process_started"):
        return running(pid, data["process_started"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"invoke" in command or b"pgrunbook" in command or b"python" in command


def leftover(settings: Settings) -> dict[str, Any] | None:
    """The record of an interrupted run of this env, if one was left."""
    data = read(settings)
    if data is None or is_alive(data):
        return None
    return data


def notice(settings: Settings) -> str | None:
    """The one line every task of the env prints while an interrupted run is unrepaired
    (or another host's run is recorded: this host cannot tell whether it still goes)."""
    data = leftover(settings)
    if data is None:
        return None
    apps = data.get("apps_stopped") or []
    stopped = f"（停止したままのアプリ: {', '.join(apps)}）" if apps else ""
    what = (f"{data.get('task', '?')}（{data.get('started_at', '?')}、{data.get('operator', '?')}、"
            f"段階: {data.get('stage', '?')}）")
    host = other_host(data)
    if host:
        return (f"ホスト {host} の {what} が終わっていません{stopped}: 実行中ならその終了を待ち、"
                f"止まっているなら → {elsewhere_hint(settings, host)}")
    return (f"前回の {what} が途中で止まっています{stopped}"
            f" → invoke restore-recover --env={settings.env} で確認・修復")


def refuse_unfinished(settings: Settings, data: dict[str, Any] | None = None) -> None:
    """Refuse to start a replace or rollback while a run of this env has not finished:
    this host's interrupted one, or another host's, named with what to run."""
    data = leftover(settings) if data is None else data
    if not data:
        return
    what = (f"{data.get('task', '?')}（開始 {data.get('started_at', '?')}、{data.get('operator', '?')}、"
            f"段階 {data.get('stage', '?')}）")
    host = other_host(data)
    if host:
        raise Refused(f"ホスト {host} の {what} が終わっていません（何も変更していません）",
                      f"実行中ならその終了を待つ。止まっているなら {elsewhere_hint(settings, host)}"
                      "してから再実行")
    raise Refused(f"前回の {what} が途中で止まったままです（何も変更していません）",
                  f"invoke restore-recover --env={settings.env} で修復してから再実行")
