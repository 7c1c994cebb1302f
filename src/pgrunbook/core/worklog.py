"""The runbook's 作業ログ: who did what, when, with which result, as JSON lines."""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.files import ensure_private_dir


def operator() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or getpass.getuser()


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ---- the hash chain (issue 12) --------------------------------------------------------
#
# Every line the kit writes ends with ``"prev": <hash of the line before>, "hash":
# <sha256 of this line without its "hash" field>``. Editing a character of a line
# breaks its own hash; deleting or inserting a line breaks the next line's
# ``prev``. Logs written before the chain existed still load: the chain starts at
# the first hashed line (whose ``prev`` is the sha256 of the raw line before it),
# and the older unhashed lines before it are reported as unprotected.

GENESIS = "0" * 64
_HASH_TAIL = re.compile(r', "hash": "([0-9a-f]{64})"\}$')


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def line_hash(line: str) -> str:
    """What the next line's ``prev`` must name: the line's own hash if it has one,
    else the sha256 of the raw (older, unhashed) line."""
    match = _HASH_TAIL.search(line)
    return match.group(1) if match else _sha256(line)


def chained_line(record: dict[str, Any], previous_line: str | None) -> str:
    """The JSON line for ``record`` chained after ``previous_line`` (None: the first line)."""
    body = {k: v for k, v in record.items() if k not in ("prev", "hash")}
    body["prev"] = line_hash(previous_line) if previous_line else GENESIS
    text = json.dumps(body, ensure_ascii=False, sort_keys=False)
    return text[:-1] + f', "hash": "{_sha256(text)}"}}'


def _last_line(fd: int) -> str | None:
    """The last line of the file open at ``fd``, read backwards from its end."""
    position = os.fstat(fd).st_size
    data = b""
    while position > 0:
        start = max(0, position - 4096)
        data = os.pread(fd, position - start, start) + data
        position = start
        if b"\n" in data.rstrip(b"\n"):
            break
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("utf-8", "replace")
    return last or None


def append(path: Path, record: dict[str, Any]) -> None:
    """Append one chained line. One flock covers reading the last line and writing
    ours, so cron and an operator appending at once still form a single chain."""
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")  # a line cut short by a crash stays its own (broken) line
        os.write(fd, (chained_line(record, _last_line(fd)) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ChainReport:
    """A work log's hash chain, checked."""

    lines: int
    first_chained: int | None  # 1-based line where the chain starts (None: no hashed line)
    broken_line: int | None  # 1-based number of the first line that does not check out
    reason: str = ""
    # what the next line's ``prev`` will name: the last line's hash (None: an empty log).
    # Written down elsewhere (an evidence file), it shows later whether the log was rewritten.
    head: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_line is None

    @property
    def unchained(self) -> int:
        """Older lines before the chain starts (loaded, but not protected)."""
        return self.lines if self.first_chained is None else self.first_chained - 1

    def describe(self) -> str:
        if self.broken_line is not None:
            return f"作業ログの {self.broken_line} 行目で改ざんの疑い: {self.reason}"
        if self.first_chained is None:
            return (f"作業ログ {self.lines} 行はすべて旧形式（ハッシュなし）で改ざんを検出できません"
                    "（次に書く行から鎖が始まります）")
        older = (f"。1〜{self.unchained} 行目は旧形式で保護されていません"
                 f"（鎖は {self.first_chained} 行目から）" if self.unchained else "")
        return f"作業ログ {self.lines} 行の鎖は途切れていません{older}"


def check_chain(lines: list[str]) -> ChainReport:
    """Walk the chain over the raw lines (without their newlines)."""
    head = line_hash(lines[-1]) if lines else None
    previous: str | None = None
    first: int | None = None
    for number, line in enumerate(lines, start=1):
        match = _HASH_TAIL.search(line)
        if first is None and match is None:
            previous = line  # an older line: the chain has not started yet
            continue
        if first is None:
            first = number
        if match is None:
            return ChainReport(len(lines), first, number, "ハッシュのない行（差し込みか書き換え）", head)
        if _sha256(line[: match.start()] + "}") != match.group(1):
            return ChainReport(len(lines), first, number, "この行の内容がハッシュと一致しません（書き換え）",
                               head)
        try:
            prev = json.loads(line).get("prev")
        except (ValueError, AttributeError):
            prev = None
        if prev != (line_hash(previous) if previous is not None else GENESIS):
            return ChainReport(len(lines), first, number,
                               "前の行のハッシュと一致しません（前の行の削除・差し込み・書き換え）", head)
        previous = line
    return ChainReport(len(lines), first, None, head=head)


def raw_lines(path: Path) -> list[str]:
    """The log's lines, read under a shared flock: never half of a line being appended."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", errors="replace", newline="\n") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        try:
            return [line.rstrip("\n") for line in handle if line.strip()]
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def verify_chain(path: Path) -> ChainReport:
    return check_chain(raw_lines(path))


def _parse(lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read(path: Path) -> list[dict[str, Any]]:
    """Every record of the log, whatever the state of its chain (for display)."""
    return _parse(raw_lines(path))


def read_trusted(path: Path) -> tuple[list[dict[str, Any]], ChainReport]:
    """The records before the first broken line, and the chain report.

    What the kit decides from the log (a backup counts as verified, prune keeps
    it) trusts only the lines before a broken link: a ``verify ok`` line forged
    by hand never makes a backup look verified.
    """
    lines = raw_lines(path)
    report = check_chain(lines)
    if report.broken_line is not None:
        lines = lines[: report.broken_line - 1]
    return _parse(lines), report


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


def announce(record: dict[str, Any], names: tuple[str, ...]) -> None:
    """Call the named listeners of the record's env with a line appended outside
    ``recorded`` (a restore drill's own line: the metrics must see it too)."""
    registered = _notifiers.get(str(record.get("env")), {})
    for name in names:
        _notify(registered.get(name), record)


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
    # the result to log when the run raised nothing (default "ok"); a backup
    # that succeeded but looks wrong logs "suspect" (issue 12)
    outcome: str = "ok"


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
        result = entry.outcome
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


def started_at(record: dict[str, Any]) -> float | None:
    """When a work-log line's run started (UNIX time), or None when its time is unreadable."""
    try:
        return datetime.fromisoformat(str(record.get("time"))).timestamp()
    except ValueError:
        return None


def ended_at(record: dict[str, Any] | None) -> float:
    """When a work-log line's run ended (UNIX time); 0 for none."""
    if not record:
        return 0.0
    return (started_at(record) or 0.0) + float(record.get("duration_seconds") or 0)
