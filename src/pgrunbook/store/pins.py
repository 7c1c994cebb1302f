"""Pins and labels, the pure half: a backup kept until a date, and the occasion's name.

A pin is a ``keep_until`` date in the backup's manifest; ``prune`` and
``offsite-prune`` keep the backup until that date whatever the other rules say.
A label names the occasion: in the file name when given to ``backup``, in the
manifest always. The operations that set and remove them (``pin``, ``unpin``)
are in ``backup/marks``.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, time
from typing import Any

from pgrunbook.core.errors import RunbookError
from pgrunbook.store import catalog

KEEP = re.compile(r"^(\d{1,3})([ymd])$")


def add_months(start: date, months: int) -> date:
    year, month = divmod(start.month - 1 + months, 12)
    year += start.year
    day = min(start.day, calendar.monthrange(year, month + 1)[1])  # 29 Feb -> 28 Feb
    return date(year, month + 1, day)


def parse_keep(text: str, start: date) -> date:
    """'10y', '18m', '90d' after ``start``, or a date 'YYYY-MM-DD'. Exit code 2 otherwise."""
    value = (text or "").strip().lower()
    match = KEEP.match(value)
    keep: date | None = None
    if match:
        number, unit = int(match.group(1)), match.group(2)
        if number > 0:
            if unit == "d":
                keep = date.fromordinal(start.toordinal() + number)
            else:
                keep = add_months(start, number * (12 if unit == "y" else 1))
    else:
        try:
            keep = date.fromisoformat(value)
        except ValueError:
            keep = None
    if keep is None or keep <= start:
        raise RunbookError(
            f"保管期限 {text!r} を解釈できません（今日より後の日付にしてください）",
            "例: --keep=10y（10 年）, --keep=7y, --keep=18m, --keep=90d, --keep=2036-03-31",
            exit_code=2,
        )
    return keep


def check_label(label: str | None) -> str | None:
    if label is None or label == "":
        return None
    if len(label) > catalog.LABEL_MAX or not catalog.LABEL.match(label):
        raise RunbookError(
            f"ラベル {label!r} は使えません",
            f"英小文字で始まる英小文字・数字・- の {catalog.LABEL_MAX} 文字以内（例: fy2025-close, "
            "release-2026-04）",
            exit_code=2,
        )
    return label


def keep_until(manifest: dict[str, Any] | None) -> date | None:
    """The pin of a manifest, or None (also for a malformed date)."""
    text = (manifest or {}).get("keep_until")
    try:
        return date.fromisoformat(str(text)) if text else None
    except ValueError:
        return None


def pinned_until(manifest: dict[str, Any] | None) -> datetime | None:
    """The end of the pin's last day, for comparisons with timestamps."""
    until = keep_until(manifest)
    return datetime.combine(until, time.max) if until else None
