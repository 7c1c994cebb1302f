"""Pure logic of issue 12: the drift comparison, the work log's hash chain, pins and labels,
and the retention policy's distrust of suspect backups."""

from __future__ import annotations

import json
import multiprocessing
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from pgrunbook.backup.prune import Candidate, Policy, decide
from pgrunbook.core import worklog
from pgrunbook.core.errors import RunbookError
from pgrunbook.store import catalog, drift
from pgrunbook.store.drift import Thresholds, compare, compare_identity
from pgrunbook.store.pins import check_label, parse_keep

DEFAULT = Thresholds()  # 50 %, tables of 100 rows or more


# --- drift.compare -----------------------------------------------------------------


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


# --- the work log's hash chain ------------------------------------------------------


def test_chain_detects_an_edited_deleted_or_inserted_line(tmp_path):
    log = tmp_path / "worklog.jsonl"
    for number in range(6):
        worklog.append(log, {"task": "backup", "n": number, "result": "ok", "note": "日本語"})
    report = worklog.verify_chain(log)
    assert report.intact and report.first_chained == 1 and report.lines == 6
    lines = log.read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line)["hash"] for line in lines)

    edited = list(lines)
    edited[2] = edited[2].replace('"n": 2', '"n": 7')  # one character
    assert worklog.check_chain(edited).broken_line == 3
    assert "書き換え" in worklog.check_chain(edited).reason
    assert worklog.check_chain(lines[:3] + lines[4:]).broken_line == 4  # line 4 deleted
    forged = json.dumps({"task": "verify", "result": "ok"}, ensure_ascii=False)
    assert worklog.check_chain(lines[:4] + [forged] + lines[4:]).broken_line == 5
    rehashed = worklog.chained_line({"task": "verify", "result": "ok"}, lines[3])
    assert worklog.check_chain(lines[:4] + [rehashed] + lines[4:]).broken_line == 6  # next link breaks

    log.write_text("\n".join(edited) + "\n", encoding="utf-8")
    records, trusted = worklog.read_trusted(log)
    assert [r["n"] for r in records] == [0, 1] and trusted.broken_line == 3
    assert len(worklog.read(log)) == 6  # display still shows everything


def test_old_logs_without_hashes_still_load_and_the_chain_starts_after_them(tmp_path):
    log = tmp_path / "worklog.jsonl"
    old = [json.dumps({"task": "backup", "n": n, "result": "ok"}) for n in range(3)]
    log.write_text("\n".join(old) + "\n", encoding="utf-8")
    report = worklog.verify_chain(log)
    assert report.intact and report.first_chained is None and "旧形式" in report.describe()
    worklog.append(log, {"task": "verify", "result": "ok"})
    worklog.append(log, {"task": "prune", "result": "ok"})
    report = worklog.verify_chain(log)
    assert report.intact and report.first_chained == 4 and report.unchained == 3
    assert "1〜3 行目は旧形式" in report.describe() and "4 行目から" in report.describe()
    assert [r["task"] for r in worklog.read_trusted(log)[0]] == ["backup"] * 3 + ["verify", "prune"]
    lines = log.read_text().splitlines()
    lines[2] = lines[2].replace('"n": 2', '"n": 9')  # the last old line is tied to the chain
    assert worklog.check_chain(lines).broken_line == 4


def test_a_line_cut_by_a_crash_breaks_the_chain_but_new_lines_stay_whole(tmp_path):
    log = tmp_path / "worklog.jsonl"
    worklog.append(log, {"task": "backup", "result": "ok"})
    with open(log, "a", encoding="utf-8") as handle:
        handle.write('{"task": "ba')  # a crash in the middle of a write
    worklog.append(log, {"task": "verify", "result": "ok"})
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["task"] == "verify"
    assert worklog.verify_chain(log).broken_line == 2


def _append_many(path: str, writer: int) -> None:
    for number in range(40):
        worklog.append(Path(path), {"task": "status", "writer": writer, "n": number})


def test_concurrent_writers_form_one_unbroken_chain(tmp_path):
    log = tmp_path / "worklog.jsonl"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_many, args=(str(log), w)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(30)
        assert process.exitcode == 0
    report = worklog.verify_chain(log)
    assert report.lines == 160 and report.intact, report


# --- pins and labels ------------------------------------------------------------------


def test_keep_periods_and_dates():
    start = date(2026, 3, 31)
    assert parse_keep("10y", start) == date(2036, 3, 31)
    assert parse_keep("7y", date(2024, 2, 29)) == date(2031, 2, 28)
    assert parse_keep("18m", start) == date(2027, 9, 30)
    assert parse_keep("90d", start) == date(2026, 6, 29)
    assert parse_keep("2036-03-31", start) == date(2036, 3, 31)
    for bad in ("", "10", "ten years", "0y", "2020-01-01", "2026-03-31"):
        with pytest.raises(RunbookError) as error:
            parse_keep(bad, start)
        assert error.value.exit_code == 2


def test_labels_are_safe_in_a_file_name_and_never_read_as_a_serial():
    assert check_label("fy2025-close") == "fy2025-close" and check_label(None) is None
    for bad in ("2025", "FY2025", "fy 2025", "fy2025-", "-x", "a" * 41, "../x", "fy_2025"):
        with pytest.raises(RunbookError):
            check_label(bad)
    name = catalog.backup_name("knot", "prod", datetime(2026, 3, 31, 23, 0), "custom", 1, "fy2025-close")
    assert name == "knot-prod-20260331-230000-1-fy2025-close.dump"
    parsed = catalog.parse(Path(name))
    assert parsed and parsed.label == "fy2025-close" and parsed.env == "prod" and not parsed.legacy
    assert catalog.parse(Path("knot-prod-20260331-close.dump")) is None  # not a kit name


# --- retention and suspect or pinned backups -------------------------------------------

NOW = datetime(2026, 6, 15, 12, 0, 0)
POLICY = Policy(days=30, weekly_days=90, monthly_days=365, min_keep=3)


def test_suspect_backups_never_count_towards_min_keep_or_stand_for_a_period():
    # 60 daily backups; the database was emptied 45 days ago and nobody noticed
    candidates = [Candidate(f"b-{d:03d}", NOW - timedelta(days=d), "custom", True, True,
                            suspect=d <= 45) for d in range(0, 60)]
    decision = decide(candidates, POLICY, NOW)
    for good in ("b-046", "b-047", "b-048"):  # the newest three trusted ones
        assert good in decision.keep, good
    assert "これより新しいものは疑わしいものだけ" in decision.keep["b-046"]
    for name, reasons in decision.keep.items():
        if int(name[2:]) <= 45:
            assert not any(r.startswith(("週 ", "月 ", "検証済み", "有効な")) for r in reasons), (name, reasons)
    assert "b-040" in decision.delete  # suspect and past RETENTION_DAYS: not a copy worth keeping

    daily_only = Policy(days=30, weekly_days=0, monthly_days=0, min_keep=3)
    assert {"b-046", "b-047", "b-048"} <= set(decide(candidates, daily_only, NOW).keep)
    unmarked = [Candidate(c.name, c.created, c.series, c.valid, c.verified) for c in candidates]
    before = decide(unmarked, daily_only, NOW)
    assert not {"b-046", "b-047", "b-048"} & set(before.keep)  # without the mark they would go


def test_pinned_backups_are_kept_until_their_date_whatever_else():
    old = NOW - timedelta(days=3000)
    candidates = [Candidate(f"b-{d:03d}", NOW - timedelta(days=d), "custom", True, True)
                  for d in range(0, 5)]
    pinned = Candidate("fy-close", old, "custom", True, False, pinned_until=NOW + timedelta(days=1))
    expired = Candidate("old-pin", old, "custom", True, False, pinned_until=NOW - timedelta(days=1))
    decision = decide(candidates + [pinned, expired], POLICY, NOW)
    assert decision.keep["fy-close"] == [f"固定（{(NOW + timedelta(days=1)):%Y-%m-%d} まで）"]
    assert "old-pin" in decision.delete


def test_when_every_valid_backup_is_suspect_the_newest_stay():
    candidates = [Candidate(f"s-{d}", NOW - timedelta(days=d), "custom", True, True, suspect=True)
                  for d in range(100, 110)]
    decision = decide(candidates, POLICY, NOW)
    assert sorted(decision.keep) == ["s-100", "s-101", "s-102"]
