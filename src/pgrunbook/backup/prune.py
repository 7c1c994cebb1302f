"""prune: the retention policy (pure) and its careful application to a folder.

Policy, per series (custom dumps, SQL dumps and globals are separate series):

* every backup younger than RETENTION_DAYS is kept;
* up to RETENTION_WEEKLY_DAYS, the newest valid backup of each ISO week;
* up to RETENTION_MONTHLY_DAYS, the newest valid backup of each month;
* whatever their age, the newest RETENTION_MIN_KEEP verified backups and the
  newest RETENTION_MIN_KEEP valid ones (so a team that never ran verify, or a
  backup job that stopped months ago, still keeps its last good copies).

Issue 12: a *suspect* backup (its content fell sharply or it is of another
database, see drift.py) is kept while it is recent but never trusted: it never
counts towards RETENTION_MIN_KEEP nor stands in for a week or a month, and the
newest trusted backup stays while only suspect ones are newer. A *pinned*
backup (``keep_until`` in its manifest) is kept until that date, whatever else.

A backup dated in the *future* (its name or manifest beyond catalog.FUTURE_TOLERANCE
ahead: the clock was wrong when it was made, or it was copied in from a host
whose clock was) is kept until a person looks, and counts for nothing: never
one of the newest RETENTION_MIN_KEEP, never a week's or a month's
representative, so it cannot push a real recent backup out. prune says so.

Only files the kit made are candidates at all: the name follows the kit's
pattern and a manifest names this env and this very file. Anything else
(hand-made, foreign, renamed) stays untouched. A deletion that would leave a
series without a valid backup is refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path

from pgrunbook.core import worklog
from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.store import catalog
from pgrunbook.store.inventory import Inventoried, future_note, inventory

PARTIAL_MAX_AGE = timedelta(days=1)


@dataclass(frozen=True)
class Policy:
    days: int = 30
    weekly_days: int = 90
    monthly_days: int = 365
    min_keep: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.retention_days, settings.retention_weekly_days,
                   settings.retention_monthly_days, settings.retention_min_keep)


@dataclass(frozen=True)
class Candidate:
    """What the policy needs to know of one kit-made backup."""

    name: str
    created: datetime
    series: str
    valid: bool
    verified: bool
    suspect: bool = False
    pinned_until: datetime | None = None
    future: bool = False  # dated beyond now + catalog.FUTURE_TOLERANCE


FUTURE_REASON = "未来の日時（最新とはみなさず、削除もしません。時計を確認）"


@dataclass
class Decision:
    keep: dict[str, list[str]] = field(default_factory=dict)  # name -> reasons
    delete: list[str] = field(default_factory=list)


def decide(candidates: Iterable[Candidate], policy: Policy, now: datetime) -> Decision:
    """Which kit-made backups to keep (with the reasons) and which to delete."""
    decision = Decision()
    by_series: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_series.setdefault(candidate.series, []).append(candidate)
    for series in by_series.values():
        ordered = sorted(series, key=lambda c: catalog.order_key(c.name, c.created))
        _decide_series(ordered, policy, now, decision)
    return decision


def _week(created: datetime) -> tuple[int, int]:
    iso = created.isocalendar()
    return (iso[0], iso[1])


def _decide_series(series: list[Candidate], policy: Policy, now: datetime, decision: Decision) -> None:
    reasons: dict[str, list[str]] = {c.name: [] for c in series}
    for skewed in (c for c in series if c.future):  # kept, and left out of everything below
        reasons[skewed.name].append(FUTURE_REASON)
    newest_first = [c for c in reversed(series) if not c.future]
    valid = [c for c in newest_first if c.valid]
    trusted = [c for c in valid if not c.suspect]  # a suspect backup never stands in for others
    # the representative of a period is its newest trusted backup, whatever its age
    week_of: dict[tuple[int, int], str] = {}
    month_of: dict[tuple[int, int], str] = {}
    for candidate in trusted:
        week_of.setdefault(_week(candidate.created), candidate.name)
        month_of.setdefault((candidate.created.year, candidate.created.month), candidate.name)
    for candidate in newest_first:
        age = now - candidate.created
        kept = reasons[candidate.name]
        week = _week(candidate.created)
        month = (candidate.created.year, candidate.created.month)
        if age < timedelta(days=policy.days):
            kept.append(f"{policy.days}日以内")
        if age < timedelta(days=policy.weekly_days) and week_of.get(week) == candidate.name:
            kept.append(f"週 {week[0]}-W{week[1]:02d} の代表")
        if age < timedelta(days=policy.monthly_days) and month_of.get(month) == candidate.name:
            kept.append(f"月 {month[0]}-{month[1]:02d} の代表")
        if candidate.pinned_until is not None and candidate.pinned_until >= now:
            kept.append(f"固定（{candidate.pinned_until:%Y-%m-%d} まで）")
    verified = [c for c in trusted if c.verified]
    for candidate in verified[: policy.min_keep]:
        reasons[candidate.name].append(f"検証済みの最新 {policy.min_keep} 件")
    for candidate in trusted[: policy.min_keep]:
        reasons[candidate.name].append(f"有効な最新 {policy.min_keep} 件")
    for last_good in (verified[:1] + trusted[:1]):
        newer = newest_first[: newest_first.index(last_good)]
        if any(c.suspect for c in newer) and all(c.suspect for c in newer if c.valid):
            reasons[last_good.name].append("これより新しいものは疑わしいものだけ")
    if valid and not trusted:
        # every valid backup is suspect (nothing to compare with was ever good?):
        # keep the newest ones until a person looks
        for candidate in valid[: policy.min_keep]:
            reasons[candidate.name].append(f"正常なものがないため最新 {policy.min_keep} 件を保持")
    if not valid:
        # nothing checks out (sidecars lost in a copy?): deleting by age could
        # remove every copy there is, so the newest ones stay until a person looks
        for candidate in newest_first[: policy.min_keep]:
            reasons[candidate.name].append(f"有効なものがないため最新 {policy.min_keep} 件を保持")
    for candidate in series:
        if reasons[candidate.name]:
            decision.keep[candidate.name] = reasons[candidate.name]
        else:
            decision.delete.append(candidate.name)


# ---- applying the policy to a folder ----------------------------------------------------


@dataclass(frozen=True)
class PrunePlan:
    decision: Decision
    items: dict[str, Inventoried]
    foreign: list[str]
    stale_partials: list[Path]
    future_note: str | None = None  # backups dated in the future: what to do about them


def series_of(item: Inventoried) -> str:
    return item.backup.format


def plan(settings: Settings, now: datetime | None = None) -> PrunePlan:
    now = now or datetime.now()
    items = inventory(settings, with_globals=True, now=now)
    kit = [i for i in items if i.made_by_kit]
    candidates = [Candidate(i.name, i.backup.created, series_of(i), i.valid, i.verified, i.suspect,
                            _pin_of(i), i.future) for i in kit]
    decision = decide(candidates, Policy.from_settings(settings), now)
    _refuse_losing_the_last_valid(kit, decision)
    return PrunePlan(
        decision=decision,
        items={i.name: i for i in kit},
        foreign=[i.name for i in items if not i.made_by_kit],
        stale_partials=stale_partials(settings, time.time()),
        future_note=future_note(kit),
    )


def _pin_of(item: Inventoried) -> datetime | None:
    if not item.keep_until:
        return None
    return datetime.combine(date.fromisoformat(item.keep_until), dt_time.max)


def _refuse_losing_the_last_valid(kit: list[Inventoried], decision: Decision) -> None:
    doomed = set(decision.delete)
    for series in {series_of(i) for i in kit}:
        valid = [i for i in kit if series_of(i) == series and i.valid]
        if valid and all(i.name in doomed for i in valid):  # pragma: no cover - policy forbids it
            raise RunbookError(
                f"削除すると {series} の有効なバックアップが 1 つも残りません（中止しました）",
                "RETENTION_MIN_KEEP と保持期間の設定を見直す",
            )


def stale_partials(settings: Settings, now_epoch: float) -> list[Path]:
    """The kit's own ``*.partial`` files left by a crash, older than a day."""
    directory = settings.backup_dir
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob(f"*{catalog.PARTIAL_SUFFIX}")):
        backup = catalog.parse(path.with_name(path.name[: -len(catalog.PARTIAL_SUFFIX)]))
        if (backup is None or backup.env != settings.env or backup.prefix != settings.backup_prefix
                or not path.is_file()):
            continue
        if now_epoch - path.stat().st_mtime > PARTIAL_MAX_AGE.total_seconds():
            found.append(path)
    return found


@dataclass
class PruneResult:
    plan: PrunePlan
    deleted: list[str]
    freed: int
    dry_run: bool


def prune(settings: Settings, dry_run: bool = False, console: Console | None = None) -> PruneResult:
    console = console or Console(settings.secrets())
    if dry_run:
        result = PruneResult(plan(settings), [], 0, True)
        _report(result, console)
        return result
    entry = worklog.Entry("prune", settings.env, settings.db_name, settings.db_container)
    with worklog.recorded(settings.worklog_path, entry, console.redact), exclusive_lock(
        settings.backup_dir, settings.db_container, settings.db_name, "prune"
    ):
        result = PruneResult(plan(settings), [], 0, False)
        for name in result.plan.decision.delete:
            result.freed += _delete_backup(settings, result.plan.items[name], entry)
            result.deleted.append(name)
        for partial in result.plan.stale_partials:
            result.freed += _delete_partial(settings, partial, entry)
            result.deleted.append(partial.name)
        entry.details.update({"deleted": len(result.deleted), "kept": len(result.plan.decision.keep),
                              "freed_bytes": result.freed})
        future = [name for name, item in result.plan.items.items() if item.future]
        if future:
            entry.details["future_dated"] = sorted(future)
        _report(result, console)
        return result


def _log_deletion(settings: Settings, entry: worklog.Entry, path: Path, sha256: str | None,
                  size: int, reason: str) -> None:
    worklog.append(settings.worklog_path, {
        "time": worklog.now_iso(),
        "operator": worklog.operator(),
        "task": "prune-delete",
        "env": settings.env,
        "container": entry.container,
        "database": entry.database,
        "file": str(path),
        "sha256": sha256,
        "result": "ok",
        "error": None,
        "size": size,
        "reason": reason,
    })


def _delete_backup(settings: Settings, item: Inventoried, entry: worklog.Entry) -> int:
    path = item.backup.path
    path.unlink()
    for sidecar in item.backup.sidecars:
        sidecar.unlink(missing_ok=True)
    _log_deletion(settings, entry, path, item.recorded_sha256, item.size, "保持期間外")
    return item.size


def _delete_partial(settings: Settings, path: Path, entry: worklog.Entry) -> int:
    size = path.stat().st_size
    os.unlink(path)
    _log_deletion(settings, entry, path, None, size, "作成途中のまま 1 日以上経過した .partial")
    return size


def _report(result: PruneResult, console: Console) -> None:
    decision = result.plan.decision
    verb = "削除予定" if result.dry_run else "削除"
    for name in sorted(decision.keep):
        console.result(f"保持\t{name}\t{', '.join(decision.keep[name])}")
    for name in decision.delete:
        console.result(f"{verb}\t{name}\t保持期間外")
    for partial in result.plan.stale_partials:
        console.result(f"{verb}\t{partial.name}\t作成途中のまま 1 日以上経過")
    for name in result.plan.foreign:
        console.result(f"対象外\t{name}\tキットが作ったものではない（触りません）")
    if result.plan.future_note:
        console.warn(result.plan.future_note)
    count = len(decision.delete) + len(result.plan.stale_partials)
    if result.dry_run:
        console.summary(f"prune（試行）: {count} 件を削除予定、{len(decision.keep)} 件を保持"
                        f"、対象外 {len(result.plan.foreign)} 件（何も削除していません）")
    else:
        console.summary(f"prune 完了: {count} 件削除（{human_size(result.freed)}）、"
                        f"{len(decision.keep)} 件保持、対象外 {len(result.plan.foreign)} 件")
