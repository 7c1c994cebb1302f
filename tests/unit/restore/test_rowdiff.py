"""The merge of two key-ordered streams (rowdiff.compare), pure."""

from __future__ import annotations

import random

import pytest

from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.restore.rowdiff import Selection, check_where, compare, hashing_major, unescape
from pgrunbook.restore.tables import Catalog, Column, Table, value_hash

TABLE = Table(1, "public", "votes", "app", True, (Column("id", "bigint"), Column("topic", "text")), ("id",))


def lines(rows: dict[int, str], selected=lambda key: True) -> list[bytes]:
    return [b"%d\t%s\t%s" % (key, b"t" if selected(key) else b"f", value.encode())
            for key, value in sorted(rows.items())]


def test_missing_changed_extra_with_examples_and_callback():
    backup = {1: "a", 2: "b", 3: "c", 5: "e"}
    live = {1: "a", 3: "C", 4: "d", 5: "e"}
    seen = []
    result = compare(Selection(TABLE, ("id",), ("id", "topic")), iter(lines(backup)), iter(lines(live)),
                     lambda kind, fields: seen.append((kind, fields)))
    assert result.same == 2
    assert result.counts == {"missing": 1, "changed": 1, "extra": 1}
    assert result.examples == {"missing": ["2"], "changed": ["3"], "extra": ["4"]}
    assert seen == [("missing", [b"2"]), ("changed", [b"3"]), ("extra", [b"4"])]


def test_the_fast_path_and_the_checked_path_agree_on_random_tables():
    generator = random.Random(23)
    backup = {key: f"v{key}" for key in range(1, 5000)}
    live = dict(backup)
    for key in generator.sample(range(1, 5000), 300):
        roll = generator.random()
        if roll < 0.4:
            live.pop(key, None)
        elif roll < 0.8:
            live[key] = "changed"
    for key in range(5000, 5030):
        live[key] = "new"
    trusted = compare(Selection(TABLE, ("id",), ("id",)), iter(lines(backup)), iter(lines(live)))
    by_key = Table(1, "public", "votes", "app", True, TABLE.columns, None)  # --key: every line checked
    checked = compare(Selection(by_key, ("id",), ("id",)), iter(lines(backup)), iter(lines(live)))
    assert (trusted.same, trusted.counts, trusted.digest) == (checked.same, checked.counts, checked.digest)
    assert trusted.counts["extra"] >= 30


def test_a_key_selected_on_either_side_is_compared():
    backup = {1: "a", 2: "b", 3: "c"}
    live = {1: "a", 2: "moved", 3: "c"}
    # row 2 left the selection in live (its topic changed): still "changed", not missing + extra
    result = compare(Selection(TABLE, ("id",), ("id",), "x"), iter(lines(backup)),
                     iter(lines(live, lambda key: key != 2)))
    assert result.counts == {"missing": 0, "changed": 1, "extra": 0} and result.same == 2


def test_the_digest_names_the_live_rows_it_saw():
    selection = Selection(TABLE, ("id",), ("id",))
    first = compare(selection, iter(lines({1: "a"})), iter(lines({1: "b"})))
    second = compare(selection, iter(lines({1: "a"})), iter(lines({1: "c"})))
    assert first.counts == second.counts and first.digest != second.digest


def test_duplicates_nulls_and_a_foreign_order_stop_the_merge():
    by_key = Table(1, "public", "t", "app", True, (Column("topic", "text"),), None)
    selection = Selection(by_key, ("topic",), ("topic",))
    with pytest.raises(Refused, match="重複"):
        compare(selection, iter([b"a\tt\t1", b"a\tt\t2"]), iter([]))
    with pytest.raises(Refused, match="NULL"):
        compare(selection, iter([b"\\N\tt\t1"]), iter([]))
    with pytest.raises(RunbookError, match="並び順"):
        compare(selection, iter([b"b\tt\t1", b"a\tt\t2"]), iter([b"a\tt\t2"]))


def test_copy_text_fields_are_unescaped_for_order_and_display():
    assert unescape(b"a\\tb\\\\c\\n") == "a\tb\\c\n"
    assert unescape(b"\\x41\\101") == "AA"
    assert unescape("承認".encode()) == "承認"


@pytest.mark.parametrize("where", ["topic = '予算'", "(a = 1 OR b = 'x;y')", "id < 5",
                                   "topic = 'select a table'", "extract(year FROM cast_at) = 2026",
                                   '"select" = 1'])
def test_a_where_that_is_one_condition_passes(where):
    assert check_where(where) == where


@pytest.mark.parametrize("where", ["true; DROP TABLE x", "a = 1) OR (true", "a = 1 -- x", "\\! ls",
                                   "$$x$$ = 'x'", "a = 'open",
                                   "member_id IN (SELECT id FROM members)", "EXISTS (table members)"])
def test_a_where_that_could_leave_its_parentheses_is_refused(where):
    with pytest.raises(RunbookError) as raised:
        check_where(where)
    assert raised.value.exit_code == 2


def test_rows_are_hashed_by_value_only_where_equal_values_print_alike():
    columns = [Column("id", "bigint"), Column("name", "character varying(20)"),
               Column("at", "timestamp(3) with time zone"), Column("amount", "numeric(10,2)"),
               Column("blind", "text", deterministic=False), Column("doc", "jsonb")]
    # a bigint goes in as its two halves, a timestamp or a time as its exact seconds: their hash
    # functions fold 64 bits into 32 (hashint8extended), so values 2^32 + 1 apart would hash alike
    assert value_hash(columns, "t") == ('hash_record_extended(ROW((t."id" >> 32)::integer, '
                                        '(t."id" & 4294967295), t."name", extract(epoch FROM t."at"), extract(epoch FROM t."at") < 0, '
                                        'ROW(t."amount", t."blind", t."doc")::text), 0)')
    assert value_hash(columns[1:3]) == ('hash_record_extended(ROW("name", extract(epoch FROM "at"), '
                                        'extract(epoch FROM "at") < 0), 0)')
    assert value_hash(columns[3:]) == 'hashtextextended(ROW("amount", "blind", "doc")::text, 0)'
    assert value_hash([Column("at", "timestamp without time zone"), Column("t", "time(0) without time zone")]) \
        == ('hash_record_extended(ROW(extract(epoch FROM "at"), extract(epoch FROM "at") < 0, '
            'extract(epoch FROM "t"), extract(epoch FROM "t") < 0), 0)')


def catalog(table: Table | None, major: int) -> Catalog:
    """A source's catalog with ``table`` (or without any) on a server of ``major``."""
    return Catalog({table.oid: table} if table else {}, version_num=major * 10000)


def test_rows_are_hashed_by_value_only_where_both_sides_hash_each_such_column_alike():
    assert hashing_major(13) == 0 and hashing_major(18) == 18
    text = Selection(TABLE, ("id",), ("id", "topic"), by_value=hashing_major(13))
    assert "hashtextextended(ROW(" in text.stream_sql()
    assert text.hashing_with(catalog(TABLE, 17)) is text  # the text is the same on any version
    by_value = Selection(TABLE, ("id",), ("id", "topic"), by_value=hashing_major(15))
    assert "hash_record_extended(ROW(" in by_value.stream_sql()
    assert by_value.hashing_with(catalog(TABLE, 15)) is by_value
    case_blind = Table(1, "public", "votes", "app", True,
                       (Column("id", "bigint"), Column("topic", "text", deterministic=False)), ("id",))
    for other, major in ((TABLE, 16), (case_blind, 15), (None, 15)):
        found = by_value.hashing_with(catalog(other, major))
        assert found.by_value == 0 and "hashtextextended(ROW(" in found.stream_sql()



def test_a_batch_that_reuses_a_freed_batchs_memory_is_parsed_afresh(monkeypatch):
    """CPython may give a new batch list the id of one freed before it: the head parsed last
    must be told by the batch's number, not its id, or a line is taken for one parsed in an
    earlier batch (its key, its hash) and the wrong row is reported and put back. Here each
    side's batches are one list object, refilled: the worst case of that reuse."""
    import itertools

    from pgrunbook.restore import rowdiff

    boxes: dict[int, list[bytes]] = {}

    def refilled(stream):
        box = boxes.setdefault(id(stream), [])
        box[:] = itertools.islice(stream, rowdiff.BATCH)
        return box

    monkeypatch.setattr(rowdiff, "_next_batch", refilled)
    size = rowdiff.BATCH
    backup = {key: "v" for key in range(1, size * 4 + 1)}
    live = dict(backup)
    live[6] = live[6 + 2 * size] = "x"  # the same place in batch 0 and batch 2; batch 1 all alike
    seen = []
    result = compare(Selection(TABLE, ("id",), ("id", "topic")), iter(lines(backup)), iter(lines(live)),
                     lambda kind, fields: seen.append((kind, fields)))
    assert seen == [("changed", [b"6"]), ("changed", [str(6 + 2 * size).encode()])]
    assert result.counts["changed"] == 2
