"""Pure pieces of restore-recover: what it says of the interrupted run (the repairs
themselves run on the real engine in tests/e2e/restore/)."""

from __future__ import annotations

from pgrunbook.core.settings import load_settings
from pgrunbook.restore.recover import swapped_before_the_interruption


def test_only_a_replace_interrupted_after_its_swap_is_said_to_be_complete(tmp_path):
    (tmp_path / ".env.prod").write_text("DB_PASSWORD=s3cret\nDB_NAME=shop\n", encoding="utf-8")
    settings = load_settings("prod", tmp_path)
    record = {"task": "restore-replace", "stage": "after-swap", "previous": "shop_pgrunbook_previous_1"}
    said = swapped_before_the_interruption(settings, record)
    assert "置き換えは完了しています" in said and "shop_pgrunbook_previous_1" in said
    assert "invoke restore-rollback --env=prod --previous=shop_pgrunbook_previous_1 --confirm=prod" in said
    # before the swap, in it (its verdict unknown to the journal), a rollback, no journal: nothing said
    for other in ({**record, "stage": "swap"}, {**record, "stage": "apps-started"},
                  {**record, "task": "restore-rollback"}, {**record, "previous": None}):
        assert swapped_before_the_interruption(settings, other) == ""
    assert swapped_before_the_interruption(settings, None) == ""
