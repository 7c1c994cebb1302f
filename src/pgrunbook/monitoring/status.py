"""``status``: the newest good backup's freshness, in one line for monitoring.

Reads only the host's files and the work log: it never touches the database,
so it works when the server is down, and it writes no work-log line (it runs
every hour). 0 fresh, 1 stale, 2 none (or one dated in the future), 3 the
newest backup is suspect, 4 the work log's hash chain is broken, 5 the last key
drill is older than KEY_DRILL_MAX_AGE, none was made, or it failed (envs with an
offsite bucket only).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pgrunbook.core import worklog
from pgrunbook.core.durations import describe_age
from pgrunbook.core.settings import Settings
from pgrunbook.offsite import keydrill
from pgrunbook.store import catalog, drift
from pgrunbook.store.inventory import Inventoried, future_note, inventory

SUSPECT_EXIT = 3  # the newest backup's content looks wrong (issue 12)
WORKLOG_EXIT = 4  # the work log's hash chain is broken (issue 12)
KEY_DRILL_EXIT = 5  # the escrowed key was not tried on a copy for KEY_DRILL_MAX_AGE (issue 25)


@dataclass(frozen=True)
class Freshness:
    exit_code: int  # 0 fresh, 1 stale, 2 none, 3 newest suspect, 4 work log broken, 5 key drill
    line: str


def _warnings(settings: Settings, items: list[Inventoried]) -> list[tuple[int, str]]:
    """(exit code, text) of what status must warn about besides freshness."""
    found = []
    newest_of_series: dict[str, Inventoried] = {}
    for item in items:  # oldest first: the last one of each format wins
        newest_of_series[item.backup.format] = item
    for newest in sorted(newest_of_series.values(),
                         key=lambda i: catalog.order_key(i.name, i.backup.created)):
        if not newest.suspect:
            continue
        manifest = newest.backup.manifest() or {}
        reasons = drift.describe((manifest.get("drift") or {}).get("findings") or [])
        found.append((SUSPECT_EXIT, f"最新のバックアップ {newest.name} は疑わしい内容です"
                      f"（{'; '.join(reasons[:3])}{' ほか' if len(reasons) > 3 else ''}）→ DB を確認し、"
                      f"意図した変化なら invoke accept-drift --env={settings.env} --file={newest.name} "
                      "--reason=..."))
    chain = worklog.verify_chain(settings.worklog_path)
    if not chain.intact:
        found.append((WORKLOG_EXIT, f"{chain.describe()}（それ以降の行は信用しません）→ "
                      f"invoke worklog-verify --env={settings.env}"))
    keys = keydrill.assess(settings)
    if keys is not None and not keys.ok:
        found.append((KEY_DRILL_EXIT, f"{keys.text} → {keys.todo}"))
    return found


def freshness(settings: Settings, max_age: timedelta, now: datetime | None = None) -> Freshness:
    """The newest verified, non-suspect database backup against max_age (globals do not
    count), then the warnings: a suspect newest backup, a broken work log.

    A backup dated in the future (beyond catalog.FUTURE_TOLERANCE) is an error of its
    own: it would otherwise read as fresh for as long as it is ahead."""
    now = now or datetime.now()
    label = f"env={settings.env}"
    note = future_note(inventory(settings, with_globals=True, now=now))
    if note:
        return Freshness(2, f"CRITICAL {label}: {note}")
    everything = inventory(settings, with_globals=False, now=now)
    items = [i for i in everything if i.verified and i.valid and not i.suspect]
    warnings = _warnings(settings, [i for i in everything if i.made_by_kit])
    extra = "".join(f" / WARNING: {text}" for _, text in warnings)
    if not items:
        suspects = sum(1 for i in everything if i.suspect)
        more = (f"（未検証のバックアップは {len(everything) - suspects} 件"
                + (f"、疑わしいものは {suspects} 件" if suspects else "") + "）") if everything else ""
        return Freshness(
            2,
            f"CRITICAL {label}: 検証済みのバックアップがありません{more} → "
            f"invoke backup --env={settings.env} && invoke verify --env={settings.env}{extra}",
        )
    newest = items[-1]
    age = max(now - newest.backup.created, timedelta(0))  # within the tolerance: "0分前"
    limit = describe_age(max_age)
    if age > max_age:
        return Freshness(
            1,
            f"STALE {label}: 最新の検証済みバックアップ {newest.name} は "
            f"{describe_age(age)}前（上限 {limit}）→ cron とログを確認{extra}",
        )
    fresh = f"最新の検証済みバックアップ {newest.name}（{describe_age(age)}前、上限 {limit}）"
    if warnings:
        code, text = warnings[0]
        rest = "".join(f" / {other}" for _, other in warnings[1:])
        return Freshness(code, f"WARNING {label}: {text}{rest}（{fresh}）")
    return Freshness(0, f"OK {label}: {fresh}")
