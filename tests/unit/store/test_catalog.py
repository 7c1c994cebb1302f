"""Pure logic: settings, names, archive headers. No Docker needed."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pgrunbook.store import catalog


def test_backup_names_round_trip():
    when = datetime(2026, 1, 28, 2, 0, 5)
    name = catalog.backup_name("knot", "prod", when, "custom")
    assert name == "knot-prod-20260128-020005.dump"
    parsed = catalog.parse(Path(name))
    assert parsed and parsed.env == "prod" and parsed.created == when and not parsed.legacy
    legacy = catalog.parse(Path("knot-prod-20260128.dump"))
    assert legacy and legacy.legacy and legacy.format == "custom"
    assert catalog.parse(Path("knot-prod-20260128-020005.dump.partial")) is None
    assert catalog.parse(Path("notes.txt")) is None
    assert catalog.parse(Path("knot-prod-20260128-020005-2.sql")).format == "plain"


def test_free_name_never_reuses(tmp_path):
    when = datetime(2026, 1, 28, 2, 0, 5)
    first = catalog.free_name(tmp_path, "knot", "prod", when, "custom")
    first.with_name(first.name + ".json").write_text("{}")
    second = catalog.free_name(tmp_path, "knot", "prod", when, "custom")
    assert second != first and second.name == "knot-prod-20260128-020005-1.dump"


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
