"""Pure logic of operations: the retention policy, durations, the inventory table."""

from __future__ import annotations

from datetime import datetime, timedelta

from pgrunbook.backup.prune import Candidate, Policy, decide

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


def test_a_series_with_nothing_valid_keeps_its_newest_files():
    policy = Policy(days=30, weekly_days=90, monthly_days=365, min_keep=3)
    unchecked = [Candidate(f"x-{d}", NOW - timedelta(days=d), "custom", False, False)
                 for d in range(400, 410)]
    decision = decide(unchecked, policy, NOW)
    assert sorted(decision.keep) == ["x-400", "x-401", "x-402"]
    assert len(decision.delete) == 7


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
