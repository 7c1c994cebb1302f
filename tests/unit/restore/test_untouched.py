"""The verdict on a prestaged database from one read of its statistics and catalog
(checks.Untouched): untouched, written, or unknown (then counted)."""

from __future__ import annotations

from pgrunbook.restore.checks import Untouched, files_digest

EXPECTED = {"public.members": 3, "public.votes": 10}
FILES = files_digest([("public", "members", "16500"), ("public", "votes", "16510")])


def read(inserted=None, changed=None, files=FILES) -> Untouched:
    return Untouched(["public"], dict(inserted or EXPECTED), dict(changed or dict.fromkeys(EXPECTED, 0)), files)


def test_exactly_the_rows_restored_in_the_files_recorded_is_untouched():
    found = read()
    assert found.verdict(EXPECTED, FILES) == "untouched"
    summary = found.summary("db", EXPECTED)
    assert summary.tables == EXPECTED and summary.schemas == ["public"]


def test_any_write_or_rewrite_since_is_written():
    assert read(changed={"public.members": 1, "public.votes": 0}).verdict(EXPECTED, FILES) == "written"
    assert read(inserted={"public.members": 4, "public.votes": 10}).verdict(EXPECTED, FILES) == "written"
    truncated = files_digest([("public", "members", "16600"), ("public", "votes", "16510")])
    assert read(files=truncated).verdict(EXPECTED, FILES) == "written"
    extra = read(inserted={**EXPECTED, "public.new": 0}, changed={**dict.fromkeys(EXPECTED, 0), "public.new": 0})
    assert extra.verdict(EXPECTED, FILES) == "written"


def test_statistics_reset_or_no_record_is_unknown():
    assert read(inserted=dict.fromkeys(EXPECTED, 0)).verdict(EXPECTED, FILES) == "unknown"  # a crash
    assert read().verdict(EXPECTED, "") == "unknown"  # a mark from before the record
    assert read().verdict(None, FILES) == "unknown"  # ROW_COUNTS=false: nothing to compare with


def test_the_files_digest_does_not_depend_on_the_order():
    assert files_digest([("public", "votes", "16510"), ("public", "members", "16500")]) == FILES
    assert len(FILES) == 16


def test_written_out_after_a_checkpoint_that_began_later_or_twice_the_timeout():
    asked = Untouched(["public"], {}, {}, FILES, checkpoint_timeout=300, wal_lsn="1/20",
                      checkpoint_redo="1/1A")
    assert asked.written_out("1/19", marked_at=1_000_000.0, now=1_000_001.0)
    assert not asked.written_out("1/1A", marked_at=1_000_000.0, now=9_000_000.0)  # not after it
    assert asked.written_out("0/FFFFFFFF", marked_at=0, now=0)  # across the 4 GiB boundary
    blind = Untouched(["public"], {}, {}, FILES, checkpoint_timeout=300)  # no right to ask
    assert not blind.written_out("1/19", marked_at=1_000_000.0, now=1_000_599.0)
    assert blind.written_out("1/19", marked_at=1_000_000.0, now=1_000_601.0)
    assert not asked.written_out("", marked_at=1_000_000.0, now=1_000_599.0)  # an older mark: by the clock
