"""Guards against the operator's worst night: concurrent runs, wrong env, no confirmation."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import ensure_private_dir
from pgrunbook.core.worklog import now_iso, operator


@contextmanager
def exclusive_lock(directory: Path, container: str, database: str, task: str) -> Iterator[Path]:
    """One writer per env's database. The kernel drops a dead holder's lock.

    The key is the database inside the env's own folder, never the container
    as written in the settings: a name, an ID or a Compose service of one
    container must take one lock (issue 11, defect 11); two envs never reach
    one database (settings and ``discovery.bind`` refuse it). ``container``
    only names the holder.

    ``flock`` is released when the holding process dies, however it dies, so a
    stale lock file is simply taken over; its content only names the holder.
    """
    ensure_private_dir(directory)
    path = directory / f".lock-{database}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe_holder(fd)
        os.close(fd)
        raise RunbookError(
            f"{container} の {database} は別の作業が実行中です（{holder}）",
            "その作業の終了を待ってから再実行（ps でプロセスを確認）",
        ) from None
    try:
        os.ftruncate(fd, 0)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "operator": operator(),
            "task": task,
            "container": container,
            "started_at": now_iso(),
        }
        os.pwrite(fd, json.dumps(holder, ensure_ascii=False).encode(), 0)
        yield path
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _describe_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "保持者不明"
    return (
        f"task={holder.get('task')} pid={holder.get('pid')} host={holder.get('host')} "
        f"operator={holder.get('operator')} 開始={holder.get('started_at')}"
    )
