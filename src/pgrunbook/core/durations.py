"""Durations as operators write and read them: '26h', '90m', '1d12h' in, '2日3時間' out."""

from __future__ import annotations

import re
from datetime import timedelta

from pgrunbook.core.errors import RunbookError

DURATION = re.compile(r"(\d+)\s*([smhdw])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """'26h', '90m', '2d', '1d12h' -> timedelta. Exit code 2 on anything else."""
    compact = (text or "").strip().lower()
    if not compact or DURATION.sub("", compact).strip():
        raise RunbookError(
            f"期間 {text!r} を解釈できません",
            "数字と単位で指定（例: 26h, 90m, 2d, 1d12h。単位 s/m/h/d/w）",
            exit_code=2,
        )
    seconds = sum(int(n) * UNIT_SECONDS[u] for n, u in DURATION.findall(compact))
    if seconds <= 0:
        raise RunbookError(f"期間 {text!r} は 0 より大きくしてください", exit_code=2)
    return timedelta(seconds=seconds)


def describe_age(age: timedelta) -> str:
    minutes = int(age.total_seconds() // 60)
    if minutes < 0:
        return "未来の日時"
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}日{hours}時間"
    if hours:
        return f"{hours}時間{minutes}分"
    return f"{minutes}分"
