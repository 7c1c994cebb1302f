"""Pure logic of issue 12: the drift comparison, the work log's hash chain, pins and labels,
and the retention policy's distrust of suspect backups."""

from __future__ import annotations

from pgrunbook.store import drift
from pgrunbook.store.drift import Thresholds, compare, compare_identity

DEFAULT = Thresholds()  # 50 %, tables of 100 rows or more


def test_same_or_growing_content_is_no_finding():
    before = {"public.members": 40, "audit.audit_log": 900, "accounting.journal_entries": 600}
    assert compare(before, before, DEFAULT) == []
    assert compare(before, {**before, "audit.audit_log": 5000, "public.new_table": 3}, DEFAULT) == []


def test_a_truncated_big_table_is_named_with_its_numbers():
    before = {"public.members": 40, "audit.audit_log": 900, "accounting.journal_entries": 600}
    after = {**before, "audit.audit_log": 0}
    findings = compare(before, after, DEFAULT)
    assert [f.kind for f in findings] == [drift.TABLE_DROP, drift.TOTAL_DROP]
    assert findings[0].table == "audit.audit_log" and (findings[0].before, findings[0].after) == (900, 0)
    assert findings[0].message == "audit.audit_log: 900 行 → 0 行（100% 減、上限 50%）"
    assert findings[1].message == "全テーブルの合計: 1,540 行 → 640 行（58% 減、上限 50%）"


def test_the_threshold_is_strictly_more_than_the_limit_and_small_tables_are_ignored():
    assert compare({"t.a": 1000}, {"t.a": 500}, DEFAULT) == []  # exactly 50 %: allowed
    assert [f.kind for f in compare({"t.a": 1000}, {"t.a": 499}, DEFAULT)] == [drift.TABLE_DROP,
                                                                              drift.TOTAL_DROP]
    assert compare({"t.small": 99, "t.big": 10_000}, {"t.small": 0, "t.big": 10_000}, DEFAULT) == []
    loose = Thresholds(max_drop_percent=90, min_rows=10)
    assert compare({"t.a": 1000}, {"t.a": 200}, loose) == []
    assert compare({"t.a": 1000}, {"t.a": 0}, Thresholds(max_drop_percent=100)) == []  # switched off


def test_missing_tables_and_a_nearly_empty_database():
    before = {"public.members": 40, "audit.audit_log": 900, "accounting.journal_entries": 600}
    findings = compare(before, {"public.members": 3}, DEFAULT)
    kinds = [f.kind for f in findings]
    assert kinds == [drift.TABLE_MISSING, drift.TABLE_MISSING, drift.NEARLY_EMPTY]
    assert findings[0].message == "テーブル accounting.journal_entries がなくなりました（600 行あった）"
    assert findings[2].message == "DB がほぼ空です: 全テーブルの合計 1,540 行 → 3 行"
    # a missing table is found even when the rows were not counted (ROW_COUNTS=false)
    unknown = compare({"a.t": -1, "a.u": -1}, {"a.t": -1}, DEFAULT)
    assert [(f.kind, f.table) for f in unknown] == [(drift.TABLE_MISSING, "a.u")]
    assert "行数は不明" in unknown[0].message
    assert compare({}, {"a.t": 5}, DEFAULT) == []  # nothing before: nothing to lose


def test_identity_change_names_the_first_differing_field():
    before = {"system_identifier": "7300000000000000001", "database_oid": "16384",
              "database_created": "2026-01-01T00:00:00Z"}
    assert compare_identity(before, dict(before)) == []
    recreated = {"system_identifier": "7300000000000000999", "database_oid": "16384",
                 "database_created": "2026-02-01T00:00:00Z"}
    [finding] = compare_identity(before, recreated)
    assert finding.kind == drift.IDENTITY and "システム識別子" in finding.message
    assert "7300000000000000001 → 7300000000000000999" in finding.message
    dropped = {**before, "database_oid": "24576", "database_created": "2026-02-01T00:00:00Z"}
    assert "DB の OID 16384 → 24576" in compare_identity(before, dropped)[0].message
    assert compare_identity(before, dropped, drift.DATABASE_FIELDS) == []
    # a field unknown on one side (no privilege) is not a difference
    assert compare_identity(before, {**before, "system_identifier": None}) == []
    assert compare_identity(None, before) == []


def test_assess_marks_suspect_and_a_logged_replace_explains_a_new_oid():
    tables = [{"schema": "audit", "name": "audit_log", "rows": 900}]
    identity = {"system_identifier": "1", "database_oid": "16384"}
    first = drift.assess(None, tables, identity, DEFAULT)
    assert first["status"] == "first" and first["findings"] == []
    previous = ("knot-prod-20260101-020000.dump", {"tables": tables, "identity": identity})
    same = drift.assess(previous, tables, identity, DEFAULT)
    assert same["status"] == "ok" and same["compared_with"] == previous[0]
    emptied = drift.assess(previous, [{**tables[0], "rows": 0}], identity, DEFAULT)
    assert emptied["status"] == "suspect"
    assert emptied["findings"][0]["message"].startswith("audit.audit_log: 900 行 → 0 行")
    swapped = {"system_identifier": "1", "database_oid": "99999"}
    assert drift.assess(previous, tables, swapped, DEFAULT)["status"] == "suspect"
    explained = drift.assess(previous, tables, swapped, DEFAULT,
                             lambda: drift.Swap("restore-replace t (ops)"))
    assert explained["status"] == "ok" and explained["identity_change_explained_by"]
    # another cluster: explained only by a swap that logged exactly this database
    other_cluster = {"system_identifier": "2", "database_oid": "99999"}
    assert drift.assess(previous, tables, other_cluster, DEFAULT, lambda: drift.Swap("x"))["status"] == "suspect"
    moved = drift.assess(previous, tables, other_cluster, DEFAULT,
                         lambda: drift.Swap("restore-replace t (ops)", dict(other_cluster)))
    assert moved["status"] == "ok" and moved["identity_change_explained_by"] == "restore-replace t (ops)"
    elsewhere = {"system_identifier": "2", "database_oid": "12345"}  # not the database swapped in
    assert drift.assess(previous, tables, other_cluster, DEFAULT,
                        lambda: drift.Swap("x", elsewhere))["status"] == "suspect"
    unknown = {"system_identifier": None, "database_oid": "99999"}  # no pg_control_system(): not enough
    assert drift.assess(previous, tables, other_cluster, DEFAULT,
                        lambda: drift.Swap("x", unknown))["status"] == "suspect"
    # the rows are compared all the same
    assert drift.assess(previous, [{**tables[0], "rows": 0}], other_cluster, DEFAULT,
                        lambda: drift.Swap("x", dict(other_cluster)))["status"] == "suspect"
