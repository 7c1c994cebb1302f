"""Pure checks of dump files on the host: custom-format header, plain SQL ending.

The custom-format header (see PostgreSQL's pg_backup_archiver.c, WriteHead):
"PGDMP", major, minor, revision, int size, offset size, format, compression
(an int before archive 1.15, an algorithm byte since), the creation time as
seven ints, then the database name, the server version and pg_dump's version
as length-prefixed strings. Ints are a sign byte followed by ``int size``
little-endian bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"PGDMP"
FORMATS = {0: "unknown", 1: "custom", 2: "files", 3: "tar", 4: "null", 5: "directory"}
SQL_COMPLETE = "-- PostgreSQL database dump complete"
SQL_HEAD = "-- PostgreSQL database dump"
GLOBALS_HEAD = "-- PostgreSQL database cluster dump"
GLOBALS_COMPLETE = "-- PostgreSQL database cluster dump complete"


class ArchiveError(ValueError):
    """The bytes are not a readable custom-format header."""


@dataclass(frozen=True)
class ArchiveHeader:
    version: tuple[int, int, int]
    format: str
    compression: str
    database: str
    server_version: str
    pg_dump_version: str

    @property
    def pg_dump_major(self) -> int:
        return major_version(self.pg_dump_version)


def major_version(text: str) -> int:
    match = re.match(r"\s*(\d+)", text or "")
    return int(match.group(1)) if match else 0


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0
        self.int_size = 4

    def take(self, count: int) -> bytes:
        if self.position + count > len(self.data):
            raise ArchiveError("header is cut short")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def integer(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if sign else value

    def string(self) -> str:
        length = self.integer()
        if length < 0:
            return ""
        if length > 4096:
            raise ArchiveError("implausible string length in header")
        return self.take(length).decode("utf-8", "replace")


def parse_header(data: bytes) -> ArchiveHeader:
    """Parse the first bytes (4 KiB is plenty) of a custom-format archive."""
    if not data.startswith(MAGIC):
        raise ArchiveError("no PGDMP signature")
    reader = _Reader(data)
    reader.take(len(MAGIC))
    version = (reader.byte(), reader.byte(), reader.byte())
    reader.int_size = reader.byte()
    reader.byte()  # offset size
    if reader.int_size not in (4, 8):
        raise ArchiveError("implausible int size in header")
    format_code = reader.byte()
    if version >= (1, 15, 0):
        algorithm = reader.byte()
        compression = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}.get(algorithm, str(algorithm))
    else:
        level = reader.integer()
        compression = "none" if level == 0 else f"gzip:{level if level > 0 else 'default'}"
    for _ in range(7):  # sec, min, hour, mday, mon, year, isdst
        reader.integer()
    database = reader.string()
    server_version = reader.string()
    pg_dump_version = reader.string()
    return ArchiveHeader(
        version=version,
        format=FORMATS.get(format_code, str(format_code)),
        compression=compression,
        database=database,
        server_version=server_version,
        pg_dump_version=pg_dump_version,
    )


def read_header(path: Path) -> ArchiveHeader:
    with open(path, "rb") as handle:
        return parse_header(handle.read(8192))


def sql_tail_is_complete(tail: str, marker: str = SQL_COMPLETE) -> bool:
    """True when pg_dump's completion comment ends the plain dump.

    Since 15.14/16.10/17.6 pg_dump ends with ``\\unrestrict <key>``; only
    comments, blank lines and that meta-command may follow the comment.
    ``marker=GLOBALS_COMPLETE`` checks the end of ``pg_dumpall`` output.
    """
    lines = tail.rstrip().splitlines()
    for line in reversed(lines):
        stripped = line.strip()
        if stripped == marker:
            return True
        if stripped in ("", "--") or stripped.startswith("\\unrestrict"):
            continue
        return False
    return False


def read_sql_tail(path: Path, size: int = 4096) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        end = handle.tell()
        handle.seek(max(0, end - size))
        return handle.read().decode("utf-8", "replace")


def sql_head_is_dump(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(512).decode("utf-8", "replace")
    return SQL_HEAD in head


def sql_head_is_globals(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(512).decode("utf-8", "replace")
    return GLOBALS_HEAD in head
