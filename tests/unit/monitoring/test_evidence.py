"""The evidence's pure logic: the period, day by day, gaps, drills, changes, the seal's
check, and that no secret of the settings reaches the page. No engine."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import load_settings
from pgrunbook.monitoring import evidence, evidence_page, metrics
from pgrunbook.monitoring.evidence_facts import (
    Period,
    change_rows,
    collect,
    day_by_day,
    drill_rows,
    fiscal_year,
    gaps,
    period_of,
)
from pgrunbook.offsite import keydrill
from pgrunbook.restore import drill

ENV = "prod"


def settings_in(tmp_path: Path, **values: str):
    text = "".join(f"{key}={value}\n" for key, value in {"DB_CONTAINER": "knot-db", **values}.items())
    (tmp_path / ".env.prod").write_text(text)
    return load_settings(ENV, tmp_path)


def line(when: str, task: str, **fields) -> dict:
    return {"time": f"{when}+00:00", "task": task, "env": ENV, "operator": "ops", "host": "db1", **fields}


@pytest.mark.parametrize("today, start, expected", [
    ("2026-04-10", "04-01", ("2025-04-01", "2026-03-31")),
    ("2026-04-01", "04-01", ("2025-04-01", "2026-03-31")),
    ("2026-03-31", "04-01", ("2024-04-01", "2025-03-31")),
    ("2026-01-01", "01-01", ("2025-01-01", "2025-12-31")),
    ("2026-12-31", "01-01", ("2025-01-01", "2025-12-31")),
])
def test_the_default_period_is_the_last_fiscal_year_that_ended(tmp_path, today, start, expected):
    settings = settings_in(tmp_path, FISCAL_YEAR_START=start)
    period = fiscal_year(settings, date.fromisoformat(today))
    assert (period.first.isoformat(), period.last.isoformat()) == expected
    assert period_of(settings, None, None, date.fromisoformat(today)) == period


def test_from_and_to(tmp_path):
    settings = settings_in(tmp_path)
    today = date(2026, 6, 15)
    assert period_of(settings, "2026-04-01", None, today) == Period(date(2026, 4, 1), today)
    assert period_of(settings, None, "2026-03-31", today) == Period(date(2025, 4, 1), date(2026, 3, 31))
    for first, last, word in (("2026-05-01", "2026-04-01", "後"), (None, "2026-06-16", "未来"),
                              ("2026-13-01", None, "日付")):
        with pytest.raises(RunbookError, match=word) as error:
            period_of(settings, first, last, today)
        assert error.value.exit_code == 2


@pytest.mark.parametrize("key, value", [("FISCAL_YEAR_START", "02-29"), ("FISCAL_YEAR_START", "4/1"),
                                        ("FISCAL_YEAR_START", "13-01"), ("KEY_DRILL_MAX_AGE", "half a year")])
def test_bad_audit_settings_are_usage_errors(tmp_path, key, value):
    with pytest.raises(RunbookError, match=key) as error:
        settings_in(tmp_path, **{key: value})
    assert error.value.exit_code == 2
    assert settings_in(tmp_path, KEY_DRILL_MAX_AGE="26w").key_drill_max_age == timedelta(weeks=26)


def test_day_by_day_takes_verified_bytes_suspects_and_drills_from_the_log():
    a, b, c, d = (f"/b/knot-prod-2025040{n}-020000.dump" for n in range(1, 5))
    records = [
        line("2025-04-01T02:00:00", "backup", file=a, sha256="a" * 64, result="ok"),
        line("2025-04-01T02:05:00", "verify", file=a, sha256="a" * 64, result="ok"),
        line("2025-04-02T02:00:00", "backup", file=b, sha256="b" * 64, result="ok"),
        line("2025-04-02T02:05:00", "verify", file=b, sha256="x" * 64, result="ok"),  # other bytes
        line("2025-04-03T02:00:00", "backup", file=c, sha256="c" * 64, result="suspect"),
        line("2025-04-03T02:05:00", "verify", file=c, sha256="c" * 64, result="ok"),
        line("2025-04-04T02:00:00", "backup", file=d, sha256="d" * 64, result="suspect"),
        line("2025-04-04T02:05:00", "verify", file=d, sha256="d" * 64, result="ok"),
        line("2025-04-04T09:00:00", "accept-drift", file=d, result="ok"),
        line("2025-04-05T02:00:00", "backup", result="started"),
        line("2025-04-05T02:00:00", "backup", result="failed", error="エラー: 接続できません"),
        line("2025-04-06T02:00:00", "backup", file=a, sha256="a" * 64, result="ok", env="dev"),
        line("2025-04-06T04:00:00", drill.TASK, file=a, result="ok"),
        line("2025-04-07T04:00:00", drill.TASK, file=a, result="failed"),
    ]
    days = day_by_day(records, ENV, Period(date(2025, 4, 1), date(2025, 4, 8)))
    assert [d.status for d in days] == ["verified", "taken", "suspect", "verified", "failed", "none", "none",
                                        "none"]
    assert (days[5].drills_ok, days[6].drills_failed) == (1, 1)
    assert gaps(days) == [(date(2025, 4, 5), date(2025, 4, 8))]
    assert gaps(days[:5]) == [(date(2025, 4, 5), date(2025, 4, 5))]
    assert gaps(days[:4]) == []


def test_drills_carry_the_time_to_recover_and_the_age_of_what_they_restored():
    records = [line("2025-04-02T04:00:00", drill.TASK, file="/b/knot-prod-20250401-020000.dump", result="ok",
                    duration_seconds=42.5, tables_compared=6, rows_compared=2140),
               line("2025-03-31T04:00:00", drill.TASK, file="/b/knot-prod-20250330-020000.dump", result="ok")]
    rows = drill_rows(records, ENV, Period(date(2025, 4, 1), date(2025, 4, 30)))
    assert len(rows) == 1  # the other one is before the period
    assert rows[0].seconds == 42.5 and (rows[0].tables, rows[0].rows) == (6, 2140)
    assert rows[0].backup_age == timedelta(days=1, hours=2)


def test_changes_list_replaces_partial_restores_rollbacks_and_a_killed_run():
    records = [
        line("2025-05-01T10:00:00", "restore-replace", result="started", stage="swap", pid=7),
        line("2025-05-01T09:59:00", "restore-replace", result="ok", duration_seconds=90,
             approved_by="部長 佐藤", file="/b/knot-prod-20250430-020000.dump", previous="app_previous_x"),
        line("2025-05-02T10:00:00", "restore-partial", result="ok", tables=["public.votes"]),
        line("2025-05-02T11:00:00", "restore-partial-undo", result="ok"),
        line("2025-05-03T10:00:00", "restore-rollback", result="started", stage="swap", pid=8),
        line("2025-05-04T10:00:00", "restore-replace", result="ok", env="dev"),
        line("2025-05-05T10:00:00", "restore-scratch", result="ok"),
    ]
    rows = change_rows(records, ENV, Period(date(2025, 5, 1), date(2025, 5, 31)))
    assert [(r.task, r.result) for r in rows] == [
        ("restore-replace", "ok"), ("restore-partial", "ok"), ("restore-partial-undo", "ok"),
        ("restore-rollback", "interrupted")]
    assert rows[0].approved_by == "部長 佐藤" and rows[0].who == "ops@db1"
    assert "knot-prod-20250430-020000.dump" in rows[0].what and "app_previous_x" in rows[0].what
    assert "終了の記録なし" in rows[3].error


def test_the_page_holds_no_secret_and_names_the_keys_by_fingerprint(tmp_path):
    recipient = "age1" + "q" * 58
    settings = settings_in(tmp_path, DB_PASSWORD="Pw-Never-Shown-41", PING_URL="https://hc-ping.com/tok-7731",
                           NOTIFY_WEBHOOK_URL="https://hooks.example.jp/T0/secret-8812",
                           APP_DATABASE_URL="postgresql://app:Url-Pw-55@db/app",
                           OFFSITE_AGE_RECIPIENTS=recipient)
    worklog.append(settings.worklog_path, line("2025-04-01T02:00:00", "backup", result="ok",
                                               file="/b/knot-prod-20250401-020000.dump", sha256="a" * 64))
    worklog.append(settings.worklog_path, line("2025-09-01T03:00:00", "pitr-drill", result="ok",
                                               stanza="knot", total_seconds=48.2, tables=6))
    page = evidence_page.render(collect(settings, Period(date(2025, 4, 1), date(2026, 3, 31)),
                                        datetime(2026, 4, 10, 9, 0)))
    for secret in ("Pw-Never-Shown-41", "tok-7731", "secret-8812", "Url-Pw-55"):
        assert secret not in page
    from pgrunbook.offsite.encryption import fingerprint

    assert fingerprint(recipient) in page and 'data-day="2026-03-31"' in page
    assert '<p id="last-pitr-drill">最後の PITR 訓練: 2025-09-01' in page and "48.2 秒" in page
    assert page.count("data-day=") == 365  # every day of the period, nothing else


def test_verify_finds_the_seal_and_sees_what_changed(tmp_path):
    settings = settings_in(tmp_path)
    for n in range(3):
        worklog.append(settings.worklog_path, line(f"2025-04-0{n + 1}T02:00:00", "backup", result="ok"))
    sealed = evidence.write_evidence(settings, "2025-04-01", "2025-04-30", None, Console())
    assert evidence.verify_evidence(settings, sealed.path).ok
    log = settings.worklog_path
    original = log.read_text()
    log.write_text(original.replace('"2025-04-02T02:00:00+00:00"', '"2025-04-02T03:00:00+00:00"'))
    verdict = evidence.verify_evidence(settings, sealed.path)
    assert not verdict.ok and any(x.startswith("NG 封印まで") for x in verdict.lines)
    log.write_text(original)
    worklog.append(log, line("2025-05-01T02:00:00", "backup", result="ok"))
    verdict = evidence.verify_evidence(settings, sealed.path)
    assert verdict.ok and "1 行追記" in verdict.lines[-1]
    log.write_text("\n".join(original.splitlines()[:-1]) + "\n")  # the seal's own line removed
    verdict = evidence.verify_evidence(settings, sealed.path)
    assert not verdict.ok and verdict.lines[0].startswith("NG ファイル")
    stray = tmp_path / "stray.html"
    stray.write_text("<html></html>")
    with pytest.raises(RunbookError, match="証跡ファイルではありません") as error:
        evidence.verify_evidence(settings, stray)
    assert error.value.exit_code == 2


def test_a_failed_evidence_leaves_no_unsealed_file(tmp_path):
    settings = settings_in(tmp_path)
    with pytest.raises(RunbookError):
        evidence.write_evidence(settings, "2026-01-01", "2025-01-01", None, Console())
    assert not list(settings.backup_dir.glob("evidence-*"))
    assert json.loads(settings.worklog_path.read_text().splitlines()[-1])["result"] == "failed"


def test_the_metrics_name_the_drill_tasks_as_their_modules_do():
    assert metrics.RESTORE_DRILL_TASK == drill.TASK
    assert metrics.KEY_DRILL_TASK == keydrill.TASK


def test_key_drills_are_assessed_against_the_max_age(tmp_path):
    assert keydrill.assess(settings_in(tmp_path)) is None  # no bucket: nothing to drill
    settings = settings_in(tmp_path, OFFSITE_BUCKET="knot-backups", KEY_DRILL_MAX_AGE="30d")
    now = datetime(2026, 6, 1, 12, 0).timestamp()
    assert keydrill.assess(settings, now).level == "stale"
    log = settings.worklog_path
    worklog.append(log, line("2026-05-20T10:00:00", keydrill.TASK, result="ok", file="x.dump",
                             recipient_fingerprint="SHA256:0123456789abcdef"))
    state = keydrill.assess(settings, now)
    assert state.ok and "SHA256:0123456789abcdef" in state.text
    assert keydrill.assess(settings, now + 40 * 86400).level == "stale"
    worklog.append(log, line("2026-05-25T10:00:00", keydrill.TASK, result="refused", error="鍵が違います"))
    assert keydrill.assess(settings, now).level == "failed"
