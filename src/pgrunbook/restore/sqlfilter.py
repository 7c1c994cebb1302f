"""``--no-owner`` / ``--no-acl`` for a plain SQL file, as pg_restore does for an archive.

psql has no such options, so the file's statements are filtered on their way
to psql: pg_dump writes each ``ALTER … OWNER TO …;``, ``GRANT …;``,
``REVOKE …;`` and ``ALTER DEFAULT PRIVILEGES …;`` on a line of its own, at the
top level. Only such a line that starts and ends outside any quoting is
dropped: lines inside COPY data, dollar-quoted bodies (functions), string
literals that span lines (a COMMENT, an ``--inserts`` row), quoted
identifiers and comments are never touched, so a row or a function that
happens to hold such text passes as it is. A ``$`` inside an identifier
(``a$b$c``) or a string (``'costs $$'``) opens no dollar quote. The file
itself, and its sha256, stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

OWNER = re.compile(rb"^(ALTER [A-Z ]+ .+ OWNER TO .+|SET SESSION AUTHORIZATION .+);\r?$")
ACL = re.compile(rb"^(GRANT|REVOKE|ALTER DEFAULT PRIVILEGES) .+;\r?$")
COPY_START = re.compile(rb"^COPY .+ FROM stdin;\r?$")
DOLLAR = re.compile(rb"\$([A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
SPECIAL = re.compile(rb"""['"$]|--|/\*""")
IDENTIFIER_CHAR = re.compile(rb"[A-Za-z0-9_$\x80-\xff]")
COMMENT_MARK = re.compile(rb"/\*|\*/")
ESCAPED_STRING_MARK = re.compile(rb"\\.|'")


class Scanner:
    """Where a .sql dump is at the end of each line fed: inside COPY data, inside a
    string, identifier, comment or dollar quote, or at the top level."""

    def __init__(self) -> None:
        self.in_copy = False
        # what is open at the end of the previous line: None (nothing), b"'" (a
        # string), b"e'" (a string with backslash escapes), b'"' (an identifier),
        # b"/*" (a comment) or a dollar-quote tag such as b"$body$"
        self.open: bytes | None = None
        self.comment_depth = 0

    def top_level(self) -> bool:
        """The next line starts outside COPY data and any quoting."""
        return not self.in_copy and self.open is None

    def feed(self, line: bytes) -> None:
        if self.in_copy:
            if line.rstrip(b"\r\n") == b"\\.":
                self.in_copy = False
            return
        top_level = self.open is None
        self._scan(line)
        if top_level and self.open is None and COPY_START.match(line):
            self.in_copy = True

    def _scan(self, line: bytes) -> None:
        at = 0
        while at < len(line):
            if self.open is None:
                found = SPECIAL.search(line, at)
                if not found:
                    return
                token, at = found.group(0), found.start()
                if token == b"--":
                    return  # the rest of the line is a comment
                if token == b"/*":
                    self.open, self.comment_depth, at = b"/*", 1, at + 2
                elif token == b'"':
                    self.open, at = b'"', at + 1
                elif token == b"'":
                    escaped = at > 0 and line[at - 1:at] in (b"E", b"e") and (
                        at < 2 or not IDENTIFIER_CHAR.match(line, at - 2))
                    self.open, at = (b"e'" if escaped else b"'"), at + 1
                else:  # "$": a dollar quote only where an identifier cannot go on
                    tag = DOLLAR.match(line, at)
                    if tag and not (at > 0 and IDENTIFIER_CHAR.match(line, at - 1)):
                        self.open, at = tag.group(0), tag.end()
                    else:
                        at += 1
            elif self.open == b"/*":
                found = COMMENT_MARK.search(line, at)
                if not found:
                    return
                self.comment_depth += 1 if found.group(0) == b"/*" else -1
                at = found.end()
                if self.comment_depth == 0:
                    self.open = None
            elif self.open in (b"'", b'"'):
                end = line.find(self.open, at)
                if end < 0:
                    return
                if line[end + 1:end + 2] == self.open:  # '' or "" inside: still open
                    at = end + 2
                else:
                    self.open, at = None, end + 1
            elif self.open == b"e'":
                found = ESCAPED_STRING_MARK.search(line, at)
                if not found:
                    return
                if found.group(0) == b"'" and line[found.end():found.end() + 1] != b"'":
                    self.open = None
                at = found.end() + (1 if found.group(0) == b"'" and self.open else 0)
            else:  # a dollar quote: only its own tag closes it
                end = line.find(self.open, at)
                if end < 0:
                    return
                self.open, at = None, end + len(self.open)


class _Lines:
    def __init__(self, owners: bool, acl: bool) -> None:
        self.owners, self.acl = owners, acl
        self.scanner = Scanner()

    def keep(self, line: bytes) -> bool:
        top_level = self.scanner.top_level()
        self.scanner.feed(line)
        if not top_level or not self.scanner.top_level():
            return True  # COPY data, a quoted text, or the line that opens one of them
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
