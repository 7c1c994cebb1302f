"""Pure logic: settings, names, archive headers. No Docker needed."""

from __future__ import annotations

import pytest

from pgrunbook.infra.archive import ArchiveError, parse_header, sql_tail_is_complete


def _int(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(4, "little")


def _str(text: str) -> bytes:
    data = text.encode()
    return _int(len(data)) + data


def test_parse_header_of_archive_1_14_and_1_15():
    dates = b"".join(_int(v) for v in (5, 0, 2, 28, 0, 126, 0))
    names = _str("app") + _str("15.18") + _str("15.18")
    old = b"PGDMP" + bytes([1, 14, 0, 4, 8, 1]) + _int(-1) + dates + names
    header = parse_header(old)
    assert header.version == (1, 14, 0) and header.format == "custom"
    assert header.database == "app" and header.pg_dump_major == 15
    new = b"PGDMP" + bytes([1, 15, 0, 4, 8, 1, 3]) + dates + _str("app") + _str("16.4") + _str("17.0")
    header = parse_header(new)
    assert header.compression == "zstd" and header.pg_dump_major == 17
    with pytest.raises(ArchiveError):
        parse_header(b"PGDMP\x01")
    with pytest.raises(ArchiveError):
        parse_header(b"-- PostgreSQL database dump")


def test_sql_completion_comment():
    assert sql_tail_is_complete("...\n--\n-- PostgreSQL database dump complete\n--\n\n")
    assert sql_tail_is_complete("-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n")
    assert not sql_tail_is_complete("COPY public.t (id) FROM stdin;\n1\n2\n")
