"""``--no-owner`` / ``--no-acl`` for a plain SQL file, as pg_restore does for an archive.

psql has no such options, so the file's statements are filtered on their way
to psql: pg_dump writes each ``ALTER … OWNER TO …;``, ``GRANT …;``,
``REVOKE …;`` and ``ALTER DEFAULT PRIVILEGES …;`` on a line of its own, at the
top level. Lines inside COPY data and inside dollar-quoted bodies (functions)
are never touched, so a row or a function that happens to hold such text
passes as it is. The file itself, and its sha256, stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

OWNER = re.compile(rb"^(ALTER [A-Z ]+ .+ OWNER TO .+|SET SESSION AUTHORIZATION .+);\r?$")
ACL = re.compile(rb"^(GRANT|REVOKE|ALTER DEFAULT PRIVILEGES) .+;\r?$")
COPY_START = re.compile(rb"^COPY .+ FROM stdin;\r?$")
DOLLAR = re.compile(rb"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


class _Lines:
    def __init__(self, owners: bool, acl: bool) -> None:
        self.owners, self.acl = owners, acl
        self.in_copy = False
        self.dollar: bytes | None = None  # the open dollar-quote tag

    def keep(self, line: bytes) -> bool:
        if self.in_copy:
            if line.rstrip(b"\r\n") == b"\\.":
                self.in_copy = False
            return True
        top_level = self.dollar is None
        for match in DOLLAR.finditer(line):
            tag = match.group(0)
            if self.dollar is None:
                self.dollar = tag
            elif tag == self.dollar:
                self.dollar = None
        if not top_level:
            return True
        if COPY_START.match(line):
            self.in_copy = True
            return True
        if self.owners and OWNER.match(line):
            return False
        return not (self.acl and ACL.match(line))


def without_owner_and_acl(chunks: Iterable[bytes], owners: bool, acl: bool) -> Iterator[bytes]:
    lines = _Lines(owners, acl)
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        parts = data.split(b"\n")
        rest = parts.pop()
        kept = [part + b"\n" for part in parts if lines.keep(part)]
        if kept:
            yield b"".join(kept)
    if rest and lines.keep(rest):
        yield rest
