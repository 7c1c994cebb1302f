"""Pure logic of pgrunbook.versions: compression by pg_dump's major, \\restrict."""

from __future__ import annotations

import pytest

from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.infra.versions import (
    check_sql_for_psql,
    dump_compression,
    dump_statistics,
    header_algorithm,
    psql_knows_restrict,
    restore_transaction_size,
    sql_dumped_by,
    sql_uses_restrict,
)

HEAD_17_6 = """--
-- PostgreSQL database dump
--

\\restrict 4Zf0gq2yQbYp7n0nVn4rJz1Hk9f8cXxT

-- Dumped from database version 17.6 (Debian 17.6-1.pgdg120+1)
-- Dumped by pg_dump version 17.6 (Debian 17.6-1.pgdg120+1)

SET statement_timeout = 0;
"""

HEAD_15_8 = HEAD_17_6.replace("\\restrict 4Zf0gq2yQbYp7n0nVn4rJz1Hk9f8cXxT\n\n", "").replace("17.6", "15.8")


@pytest.mark.parametrize(("version", "spec", "by"), [
    ("13.16", "1", "default for PostgreSQL 13"),
    ("15.18", "1", "default for PostgreSQL 15"),
    ("16.10", "lz4", "default for PostgreSQL 16"),
    ("17.12", "lz4", "default for PostgreSQL 17"),
    ("18.6", "lz4", "default for PostgreSQL 18"),
])
def test_the_default_compression_follows_pg_dumps_major(version, spec, by):
    chosen = dump_compression("", version)
    assert (chosen.spec, chosen.chosen_by) == (spec, by)


def test_a_configured_compression_wins_where_pg_dump_takes_it():
    assert dump_compression("zstd:3", "17.6").spec == "zstd:3"
    assert dump_compression("6", "13.16").spec == "6"
    assert dump_compression("gzip:1", "16.0").chosen_by == "DUMP_COMPRESSION"


@pytest.mark.parametrize("spec", ["lz4", "zstd:1", "gzip:1"])
def test_a_format_of_16_on_an_older_pg_dump_is_refused_with_both_facts(spec):
    with pytest.raises(RunbookError) as raised:
        dump_compression(spec, "15.18")
    assert spec in raised.value.message and "15.18" in raised.value.message
    assert raised.value.hint


def test_an_unknown_algorithm_is_refused():
    with pytest.raises(RunbookError):
        dump_compression("brotli:3", "17.6")


def test_header_algorithm():
    assert [header_algorithm(s) for s in ("0", "1", "9", "gzip:1", "lz4", "zstd:3")] == \
        ["none", "gzip", "gzip", "gzip", "lz4", "zstd"]


@pytest.mark.parametrize(("version", "knows"), [
    ("13.16", False), ("13.22", True), ("14.18", False), ("14.19", True), ("15.13", False),
    ("15.14", True), ("16.9", False), ("16.10", True), ("17.5", False), ("17.6", True),
    ("17.12", True), ("18.0", True), ("12.22", False), ("", True),
])
def test_which_psql_knows_restrict(version, knows):
    assert psql_knows_restrict(version) is knows


def test_restrict_is_found_in_the_head_of_a_plain_dump():
    assert sql_uses_restrict(HEAD_17_6) and not sql_uses_restrict(HEAD_15_8)
    assert sql_dumped_by(HEAD_17_6) == "17.6"


def test_a_restrict_dump_is_refused_by_a_psql_that_does_not_know_it():
    same_major_newer_minor = HEAD_17_6.replace("17.6", "15.14")
    with pytest.raises(Refused) as raised:
        check_sql_for_psql("knot-prod.sql", same_major_newer_minor, "15.8")
    assert "15.14" in raised.value.message and "15.8" in raised.value.message
    assert "何も作成していません" in raised.value.message
    check_sql_for_psql("knot-prod.sql", same_major_newer_minor, "15.14")  # knows it: fine
    check_sql_for_psql("knot-prod.sql", HEAD_15_8, "15.8")  # no \restrict: fine


def test_restore_and_dump_options_follow_the_major():
    """--transaction-size from 17 (1000 objects, shared out among parallel jobs as
    pg_upgrade does), --statistics from 18; nothing before."""
    assert [restore_transaction_size(major) for major in (13, 15, 16)] == [[], [], []]
    assert restore_transaction_size(17) == ["--transaction-size=1000"]
    assert restore_transaction_size(18, jobs=4) == ["--transaction-size=250"]
    assert [dump_statistics(major) for major in (13, 17)] == [[], []]
    assert dump_statistics(18) == dump_statistics(19) == ["--statistics"]
