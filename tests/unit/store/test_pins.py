"""Pure logic of issue 12: the drift comparison, the work log's hash chain, pins and labels,
and the retention policy's distrust of suspect backups."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest

from pgrunbook.core.errors import RunbookError
from pgrunbook.store import catalog
from pgrunbook.store.pins import check_label, parse_keep


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
