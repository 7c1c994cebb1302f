"""Pure logic of operations: the retention policy, durations, the inventory table."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from pgrunbook.backup.prune import Candidate, Policy, decide
from pgrunbook.core.durations import parse_duration
from pgrunbook.core.errors import RunbookError
from pgrunbook.store.inventory import verified_index

NOW = datetime(2026, 6, 15, 12, 0, 0)  # a Monday
POLICY = Policy(days=30, weekly_days=90, monthly_days=365, min_keep=3)


def daily(days_back: range, valid: bool = True, verified: bool = True, series: str = "custom"):
    return [Candidate(f"b-{d:03d}", NOW - timedelta(days=d), series, valid, verified) for d in days_back]


def test_one_backup_a_day_for_two_years():
    candidates = daily(range(0, 730))
    decision = decide(candidates, POLICY, NOW)
    kept = {name for name in decision.keep}
    created = {c.name: c.created for c in candidates}
    recent = {n for n in kept if NOW - created[n] < timedelta(days=30)}
    assert recent == {f"b-{d:03d}" for d in range(0, 30)}
    weekly = [n for n in kept if any(r.startswith("週 ") for r in decision.keep[n])]
    monthly = [n for n in kept if any(r.startswith("月 ") for r in decision.keep[n])]
    assert kept - recent == (set(weekly) | set(monthly)) - recent
    # one per ISO week up to 90 days: the newest of its week (a Sunday, or today's week)
    weeks = [created[n].isocalendar()[:2] for n in weekly]
    assert len(weeks) == len(set(weeks)) == 14  # W12 (Sun 22 Mar) to W25
    assert all(NOW - created[n] < timedelta(days=90) for n in weekly)
    assert all(created[n].isoweekday() == 7 for n in weekly if n != "b-000")
    # one per month up to 365 days: the last day of the month (or today's month)
    months = [(created[n].year, created[n].month) for n in monthly]
    assert len(months) == len(set(months)) == 13  # 2025-06 to 2026-06
    assert all((created[n] + timedelta(days=1)).day == 1 for n in monthly if n != "b-000")
    assert all(NOW - created[n] < timedelta(days=365) for n in kept)
    assert len(kept) == len(recent | set(weekly) | set(monthly))
    assert set(decision.delete) == set(created) - kept


def test_everything_old_keeps_the_newest_valid_ones():
    candidates = daily(range(400, 420))
    decision = decide(candidates, POLICY, NOW)
    assert sorted(decision.keep) == ["b-400", "b-401", "b-402"]
    assert len(decision.delete) == 17


def test_never_deletes_the_only_valid_backup():
    candidates = daily(range(400, 410), valid=False) + [
        Candidate("only-good", NOW - timedelta(days=500), "custom", True, False)
    ]
    decision = decide(candidates, Policy(min_keep=1), NOW)
    assert "only-good" in decision.keep
    assert set(decision.delete) == {f"b-{d:03d}" for d in range(400, 410)}


def test_verified_ones_are_kept_even_when_newer_unverified_exist():
    candidates = daily(range(400, 405), verified=False) + daily(range(500, 505), verified=True)
    decision = decide(candidates, POLICY, NOW)
    assert {"b-400", "b-401", "b-402", "b-500", "b-501", "b-502"} == set(decision.keep)


def test_invalid_backups_are_not_period_representatives():
    good = Candidate("good", NOW - timedelta(days=45, hours=2), "custom", True, True)
    broken = Candidate("broken", NOW - timedelta(days=45), "custom", False, False)
    filler = daily(range(0, 3))
    decision = decide([good, broken, *filler], POLICY, NOW)
    assert "good" in decision.keep and "broken" in decision.delete


def test_recent_backups_are_kept_even_when_broken():
    broken = Candidate("broken", NOW - timedelta(days=2), "custom", False, False)
    assert "broken" in decide([broken], POLICY, NOW).keep


def test_series_are_independent():
    dumps = daily(range(400, 405))
    roles = [Candidate(f"g-{d}", NOW - timedelta(days=d), "globals", True, False) for d in range(400, 405)]
    decision = decide(dumps + roles, POLICY, NOW)
    assert {"b-400", "b-401", "b-402", "g-400", "g-401", "g-402"} == set(decision.keep)


@pytest.mark.parametrize("text, seconds", [("26h", 26 * 3600), ("90m", 5400), ("2d", 172800),
                                           ("1d12h", 129600), ("1w", 604800), (" 45s ", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "26", "h", "3x", "0h", "-1h", "1h zz"])
def test_parse_duration_rejects(text):
    with pytest.raises(RunbookError) as raised:
        parse_duration(text)
    assert raised.value.exit_code == 2


def test_verified_index_needs_ok_same_env_and_sha():
    records = [
        {"task": "verify", "result": "ok", "env": "prod", "file": "/x/a.dump", "sha256": "aa", "time": "t1"},
        {"task": "verify", "result": "failed", "env": "prod", "file": "/x/b.dump", "sha256": "bb"},
        {"task": "verify", "result": "ok", "env": "dev", "file": "/x/c.dump", "sha256": "cc"},
        {"task": "backup", "result": "ok", "env": "prod", "file": "/x/d.dump", "sha256": "dd"},
    ]
    assert verified_index(records, "prod") == {("a.dump", "aa"): "t1"}


def test_list_table_aligns_japanese_cells(tmp_path):
    from pgrunbook.store import catalog
    from pgrunbook.store.inventory import Inventoried, _width, plain_lines, table

    def item(name: str, verified: str | None, checksum: str) -> Inventoried:
        backup = catalog.parse(tmp_path / name)
        return Inventoried(backup, 2048, checksum, "ab", True, verified)

    items = [item("knot-prod-20260128-020000.dump", "2026-01-28T02:01:00+09:00", "ok"),
             item("knot-prod-globals-20260128-020000.sql", None, "なし"),
             item("knot-prod-20250101.dump", None, "なし")]
    lines = table(items)
    assert lines[0].split() == ["名前", "形式", "サイズ", "作成日時", "検証", "チェックサム", "ラベル",
                                "保管期限", "内容"]
    starts = {lines[i].index("2026-01-28 02:00:00") for i in (2, 3)}
    assert len(starts) == 1
    checksum_column = {_width(line[: line.rindex(" ") + 1]) for line in lines[2:]}
    assert len(checksum_column) == 1, lines
    assert "済 2026-01-28T02:01" in lines[2] and "globals" in lines[3] and "custom(旧形式)" in lines[4]
    assert plain_lines(items)[1].split("\t") == [
        "knot-prod-globals-20260128-020000.sql", "globals", "2.0 KiB", "2026-01-28 02:00:00", "未", "なし",
        "-", "-", "-"]


def test_a_series_with_nothing_valid_keeps_its_newest_files():
    policy = Policy(days=30, weekly_days=90, monthly_days=365, min_keep=3)
    unchecked = [Candidate(f"x-{d}", NOW - timedelta(days=d), "custom", False, False)
                 for d in range(400, 410)]
    decision = decide(unchecked, policy, NOW)
    assert sorted(decision.keep) == ["x-400", "x-401", "x-402"]
    assert len(decision.delete) == 7


def test_two_backups_of_the_same_second_sort_by_their_serial(tmp_path):
    """backup twice within a second: the second is named ...-1.dump, and "-" sorts before
    "." — by name alone the newer file came first (and counted as the older one)."""
    from pgrunbook.store import catalog

    names = ["knot-prod-20260128-020000.dump", "knot-prod-20260128-020000-1.dump",
             "knot-prod-20260128-020000-2-before-upgrade.dump", "knot-prod-20260128-015959-3.dump"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert [b.name for b in catalog.backups_in(tmp_path)] == [
        "knot-prod-20260128-015959-3.dump", "knot-prod-20260128-020000.dump",
        "knot-prod-20260128-020000-1.dump", "knot-prod-20260128-020000-2-before-upgrade.dump"]


def test_a_future_dated_backup_is_kept_but_counts_for_nothing():
    """A clock 200 days ahead: the skewed backup stays (a person decides), but the real
    newest ones keep their RETENTION_MIN_KEEP places and their week and month."""
    real = daily(range(40, 50))  # the job stopped 40 days ago
    skewed = Candidate("skewed", NOW + timedelta(days=200), "custom", True, True, future=True)
    with_it = decide(real + [skewed], POLICY, NOW)
    without = decide(real, POLICY, NOW)
    assert set(with_it.delete) == set(without.delete)
    assert {n: r for n, r in with_it.keep.items() if n != "skewed"} == without.keep
    assert with_it.keep["skewed"] == ["未来の日時（最新とはみなさず、削除もしません。時計を確認）"]
    only_skewed = decide([skewed], POLICY, NOW)
    assert only_skewed.delete == [] and list(only_skewed.keep) == ["skewed"]
