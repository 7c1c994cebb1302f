"""Pure logic of operations: the retention policy, durations, the inventory table."""

from __future__ import annotations

import pytest

from pgrunbook.core.durations import parse_duration
from pgrunbook.core.errors import RunbookError


@pytest.mark.parametrize("text, seconds", [("26h", 26 * 3600), ("90m", 5400), ("2d", 172800),
                                           ("1d12h", 129600), ("1w", 604800), (" 45s ", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "26", "h", "3x", "0h", "-1h", "1h zz"])
def test_parse_duration_rejects(text):
    with pytest.raises(RunbookError) as raised:
        parse_duration(text)
    assert raised.value.exit_code == 2
