"""The pure logic of pgrunbook.pitr: status verdicts, the drill's comparison, parsing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.infra.postgres import TableCount
from pgrunbook.pitr import drill as pitr_drill
from pgrunbook.pitr import pgbackrest as pitr_pgbackrest
from pgrunbook.pitr import scratch as pitr_scratch
from pgrunbook.pitr import status as pitr_status

NOW = datetime(2026, 1, 28, 10, 0, tzinfo=timezone.utc)

BACKUPS = [pitr_pgbackrest.BackupSet("20260128-013000F", "full", NOW - timedelta(hours=9),
                          NOW - timedelta(hours=8, minutes=59))]


def state(**changes) -> pitr_status.ArchiverState:
    values = dict(archive_mode="on", last_archived_wal="0000000100000000000000A3",
                  last_archived_time=NOW - timedelta(seconds=40), failed_count=0, last_failed_wal=None,
                  last_failed_time=None, now=NOW, waiting=0, oldest_waiting=None)
    values.update(changes)
    return pitr_status.ArchiverState(**values)


def verdict(archiver: pitr_status.ArchiverState, backups=BACKUPS, reason=None) -> pitr_status.Status:
    limits = pitr_status.StatusLimits(timedelta(minutes=15), timedelta(days=8))
    return pitr_status.evaluate_status("prod", "knot", archiver, backups, limits, reason)


def test_status_ok_names_the_last_wal_and_backup():
    result = verdict(state())
    assert result.exit_code == 0
    assert result.line == ("OK env=prod stanza=knot: 最後にアーカイブした WAL 0000000100000000000000A3"
                           "（40秒前）、待ち 0、最新のベースバックアップ 20260128-013000F（8時間59分前）")


def test_status_errors():
    assert verdict(state(archive_mode="off")).exit_code == 2
    failing = verdict(state(failed_count=3, last_failed_wal="0000000100000000000000A4",
                            last_failed_time=NOW - timedelta(seconds=5)),
                      reason="ERROR [103] unable to find a valid repository")
    assert failing.exit_code == 2
    assert "WAL 0000000100000000000000A4 のアーカイブが失敗しています（失敗 3 回" in failing.line
    assert "ERROR [103] unable to find a valid repository" in failing.line
    assert verdict(state(last_archived_wal=None, last_archived_time=None)).exit_code == 2
    assert verdict(state(), backups=[]).exit_code == 2


def test_an_old_failure_followed_by_success_is_not_an_error():
    recovered = state(failed_count=1, last_failed_wal="0000000100000000000000A1",
                      last_failed_time=NOW - timedelta(minutes=30))
    assert verdict(recovered).exit_code == 0


def test_status_warnings():
    stuck = state(last_archived_time=NOW - timedelta(minutes=20), waiting=12,
                  oldest_waiting=NOW - timedelta(minutes=19))
    assert verdict(stuck).exit_code == 1
    # an idle server: nothing waiting, the last WAL may be old
    idle = state(last_archived_time=NOW - timedelta(hours=5), waiting=0)
    assert verdict(idle).exit_code == 0
    old = [pitr_pgbackrest.BackupSet("20260118-013000F", "full", NOW - timedelta(days=10), NOW - timedelta(days=10))]
    assert verdict(state(), backups=old).exit_code == 1


def test_compare_tables_flags_only_rows_lost_before_the_target():
    restored = [TableCount("public", "votes", 3), TableCount("public", "gone", 7),
                TableCount("public", "ledger", 9)]
    live = [("public", "votes", 4, 2), ("public", "ledger", 12, 10), ("public", "new", 5, 0)]
    checks = {c.name: c for c in pitr_drill.compare_tables(restored, live)}
    assert checks["votes"].verdict == "ok"  # 1 deleted after the target, 2 added
    assert checks["ledger"].verdict == "lost"  # 10 committed by then, only 9 restored
    assert checks["gone"].verdict == "only-restored"
    assert checks["new"].verdict == "only-live"
    assert checks["votes"].line() == "public.votes\t3\t4\t2\tOK"
    unknown = pitr_drill.compare_tables([TableCount("public", "t", 1)], [("public", "t", 5, None)])
    assert unknown[0].verdict == "ok" and unknown[0].line().endswith("\t—\tOK")


def test_target_time_parsing():
    assert pitr_scratch.target_literal(pitr_scratch.parse_target_time("2026-01-28T01:15:00Z")) == \
        "2026-01-28 01:15:00.000000+00"
    assert pitr_scratch.target_literal(pitr_scratch.parse_target_time("2026-01-28 10:15:00+09:00")) == \
        "2026-01-28 01:15:00.000000+00"
    assert pitr_scratch.target_literal(pitr_scratch.parse_target_time("2026-01-28 01:15:00.5+00")) == \
        "2026-01-28 01:15:00.500000+00"
    local = pitr_scratch.parse_target_time("2026-01-28 10:15")
    assert local.tzinfo is not None and local.replace(tzinfo=None) == datetime(2026, 1, 28, 10, 15)
    for bad in ("", "yesterday", "2026-13-01 00:00"):
        with pytest.raises(RunbookError) as error:
            pitr_scratch.parse_target_time(bad)
        assert error.value.exit_code == 2


def test_the_copy_never_archives_into_the_live_stanza():
    command = ["postgres", "-c", "wal_level=replica", "-c", "archive_mode=on", "-c",
               "archive_command=pgbackrest --stanza=knot archive-push %p", "-c", "archive_timeout=60",
               "--restore-command=x", "-c", "shared_buffers=256MB"]
    assert pitr_scratch.copied_command(command) == [
        "postgres", "-c", "wal_level=replica", "-c", "archive_timeout=60", "-c", "shared_buffers=256MB",
        "-c", "archive_mode=off"]
    assert pitr_scratch.copied_command(None) == ["postgres", "-c", "archive_mode=off"]


def test_check_archiving_says_exactly_what_to_set():
    off = pitr_pgbackrest.ArchiveSettings("off", "(disabled)", "replica", True)
    with pytest.raises(Refused) as error:
        pitr_pgbackrest.check_archiving(off, "knot")
    assert "-c archive_mode=on -c 'archive_command=pgbackrest --stanza=knot archive-push %p'" in \
        error.value.one_line()
    elsewhere = pitr_pgbackrest.ArchiveSettings("on", "pgbackrest --stanza=other archive-push %p", "replica", True)
    with pytest.raises(Refused, match="スタンザ knot"):
        pitr_pgbackrest.check_archiving(elsewhere, "knot")
    with pytest.raises(Refused, match="wal_level=minimal"):
        pitr_pgbackrest.check_archiving(pitr_pgbackrest.ArchiveSettings("on", "x", "minimal", True), "knot")
    pitr_pgbackrest.check_archiving(pitr_pgbackrest.ArchiveSettings("on", pitr_pgbackrest.expected_archive_command("knot"), "replica",
                                              False), "knot")


def test_backup_sets_and_errors_from_pgbackrest_output():
    info = json.dumps([{"name": "knot", "backup": [
        {"label": "20260128-013000F_20260129-013000D", "type": "diff", "error": False,
         "timestamp": {"start": 1769650200, "stop": 1769650260}},
        {"label": "20260128-013000F", "type": "full", "error": False,
         "timestamp": {"start": 1769563800, "stop": 1769563900}},
        {"label": "bad", "type": "full", "error": True, "timestamp": {"start": 1, "stop": 2}}]}])
    sets = pitr_pgbackrest.backup_sets(info, "knot")
    assert [s.label for s in sets] == ["20260128-013000F", "20260128-013000F_20260129-013000D"]
    assert pitr_pgbackrest.backup_sets(info, "other") == [] and pitr_pgbackrest.backup_sets("not json", "knot") == []
    text = ("P00  ERROR: [103]: unable to find a valid repository:\n"
            "       repo1: [FileMissingError] unable to load info file '/x/archive.info'\n")
    assert pitr_pgbackrest.pgbackrest_error(text) == ("[103] unable to find a valid repository: repo1: "
                                           "[FileMissingError] unable to load info file '/x/archive.info'")
    assert pitr_pgbackrest.pgbackrest_error("all fine") is None


def test_the_reason_a_recovery_stopped_is_never_a_refused_connection_of_the_kits_own():
    """On a loaded machine the kit's own connection attempt can be refused after the
    startup process's FATAL: the diagnosis must still be the startup process's."""
    from pgrunbook.pitr.scratch import recovery_failure

    logs = "\n".join([
        "2026-12-02 16:59:01 UTC [40] LOG:  starting point-in-time recovery to 2026-12-02 16:58:59+00",
        "2026-12-02 16:59:02 UTC [40] FATAL:  recovery ended before configured recovery target was reached",
        "2026-12-02 16:59:02 UTC [41] FATAL:  the database system is in recovery mode",
        "2026-12-02 16:59:02 UTC [1] LOG:  startup process (PID 40) exited with exit code 1",
    ])
    error = recovery_failure(logs, "exited", "prod")
    assert "recovery target was reached" in error.message and "WAL が対象時刻まで届いていません" in error.hint
    assert "状態 exited" in recovery_failure("LOG: nothing\nFATAL:  the database system is starting up",
                                            "exited", "prod").message


def test_archiver_failing_means_a_failure_newer_than_the_last_success():
    assert state(last_failed_time=NOW - timedelta(seconds=5)).failing
    assert not state(last_failed_time=NOW - timedelta(minutes=5)).failing  # archived since
    assert state(last_archived_time=None, last_archived_wal=None, last_failed_time=NOW).failing
    assert not state().failing
