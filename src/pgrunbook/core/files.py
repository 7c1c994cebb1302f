"""The host's files, one helper per mechanism: private folders, atomic private
writes, fsync of a folder, chunked reads, and a hash taken while a file is sent.

Everything the kit writes beside the backups is private (folders 0700, files
0600) and appears whole or not at all: a reader, or a run killed with ``kill
-9`` halfway, never leaves half a manifest, journal or report behind under its
final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
# chunks sent but not yet hashed: a hashing thread starved of CPU (2 cores, pg_restore and
# the server busy) holds the sender back instead of growing the kit's memory by a chunk each
HASH_BACKLOG = 2


def ensure_private_dir(path: Path) -> None:
    """The folder exists with mode 0700 (also when it existed with another mode)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def write_private(path: Path, content: str | bytes) -> None:
    """Write a small file atomically with mode 0600 (see ``private_file``)."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    with private_file(path) as handle:
        handle.write(data)


@contextlib.contextmanager
def private_file(path: Path) -> Iterator[BinaryIO]:
    """A file written atomically with mode 0600, in pieces of any size: a temporary
    file of this writer's own in the same folder (two writers at once never share
    one), fsynced, then renamed over ``path`` when the block ends. Nothing is left
    if the block fails or is interrupted."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def open_private(path: Path) -> BinaryIO:
    """A working file of the kit's (rows in flight), written in pieces, mode 0600 from
    its creation (replaced if it exists): not atomic, for files of a private folder
    that a run removes itself."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new name in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_chunks(path: Path, size: int = CHUNK) -> Iterator[bytes]:
    """A file's bytes in chunks: memory stays flat whatever its size."""
    with open(path, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


class HashingReader:
    """Hashes a file's bytes as they are sent (to the container for a restore, to
    ``pg_restore -f /dev/null`` for verify), so the file is read once.

    The hashing runs on its own thread, beside the sending (hashlib releases the
    GIL): sha256 of 230 MiB costs ~0.25 s that would otherwise add to the send.
    ``hexdigest`` may be called from another thread than the sender's, also while
    the sender is still running: what the sender queues after that is not counted,
    and the rest of the file is read from where the hashing stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hash = hashlib.sha256()
        self.done = 0  # bytes queued for hashing (all of them hashed once finished)
        self._lock = threading.Lock()
        self._closed = False
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=HASH_BACKLOG)
        self._thread: threading.Thread | None = None

    def _hash_queued(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self.hash.update(chunk)

    def chunks(self) -> Iterator[bytes]:
        with self._lock:
            if self._closed or self._thread is not None:
                raise RuntimeError("a HashingReader sends its file once")
            self._thread = threading.Thread(target=self._hash_queued, name="sha256", daemon=True)
            self._thread.start()
        try:
            for chunk in file_chunks(self.path):
                with self._lock:  # the hashing thread never takes it: put() cannot deadlock
                    if self._closed:
                        return
                    self._queue.put(chunk)
                    self.done += len(chunk)
                yield chunk
        finally:
            self._finish()

    def _finish(self) -> None:
        with self._lock:
            if not self._closed and self._thread is not None:
                self._queue.put(None)
            self._closed = True
            thread = self._thread
        if thread is not None:
            thread.join()

    def hexdigest(self) -> str:
        """The whole file's sha256, also when the reader stopped early."""
        self._finish()
        with open(self.path, "rb") as handle:
            handle.seek(self.done)
            while chunk := handle.read(CHUNK):
                self.hash.update(chunk)
                self.done += len(chunk)
        return self.hash.hexdigest()
