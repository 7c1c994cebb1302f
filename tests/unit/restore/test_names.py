"""Kit database names: two runs of one env never get the same name, even in the
same second (a drop WITH (FORCE) of the other run's database would follow)."""

from __future__ import annotations

import re
from datetime import datetime

from pgrunbook.core.settings import load_settings
from pgrunbook.restore.databases import MAX_NAME, kit_name


def settings_for(tmp_path, name: str):
    (tmp_path / ".env.prod").write_text(f"DB_NAME={name}\n")
    return load_settings("prod", tmp_path)


def test_names_made_in_the_same_instant_differ(tmp_path):
    settings = settings_for(tmp_path, "app")
    when = datetime(2026, 1, 28, 2, 0, 0, 123456)
    names = {kit_name(settings, "staging", when) for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert re.fullmatch(r"app_pgrunbook_staging_20260128020000123_[0-9a-f]{4}", name), name


def test_a_long_database_name_still_gets_a_unique_name_within_the_limit(tmp_path):
    settings = settings_for(tmp_path, "a" * 60)
    when = datetime(2026, 1, 28, 2, 0, 0)
    names = {kit_name(settings, "rolledback", when) for _ in range(20)}
    assert len(names) == 20 and all(len(n.encode()) <= MAX_NAME for n in names), names


def test_a_fixed_token_gives_the_same_name_for_the_docs(tmp_path):
    settings = settings_for(tmp_path, "app")
    when = datetime(2026, 1, 28, 2, 0, 0)
    assert kit_name(settings, "previous", when, token="4f2a") == kit_name(settings, "previous", when, token="4f2a")
