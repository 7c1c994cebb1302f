"""The pure logic of pgrunbook.pitr: status verdicts, the drill's comparison, parsing."""

from __future__ import annotations

from datetime import datetime, timezone


def metric_values(observation: dict, drills: list[dict] | None = None) -> dict:
    from pgrunbook.monitoring import pitr_metrics

    return {(s.name, s.labels.get("type")): s.value for s in pitr_metrics.values(observation, drills or [])}


def test_metrics_before_any_pitr_status_are_never_values():
    import math

    from pgrunbook.monitoring import pitr_metrics

    found = metric_values({})
    assert set(name for name, _ in found) == set(pitr_metrics.METRICS)
    assert found[("pgrunbook_pitr_status_exit_code", None)] == 2  # unknown is not "ok"
    assert found[("pgrunbook_pitr_status_timestamp_seconds", None)] == 0
    assert found[("pgrunbook_pitr_wal_waiting_segments", None)] == 0
    assert not any(math.isnan(value) for value in found.values())
    for kind in ("full", "diff", "incr"):
        assert found[("pgrunbook_pitr_backup_last_timestamp_seconds", kind)] == 0
        assert found[("pgrunbook_pitr_backups", kind)] == 0
    assert found[("pgrunbook_pitr_drill_last_success", None)] == 0


def test_metrics_of_an_observation_and_the_last_drill():
    import math

    from pgrunbook.monitoring import pitr_metrics

    observed = {"checked": 1000.0, "exit_code": 1, "archiver": {
        "last_archived": 900.0, "failed_count": 3, "last_failed": 950.0, "failing": True,
        "waiting": None, "oldest_waiting": None},
        "backups": [{"label": "a", "type": "full", "stop": 100.0}, {"label": "b", "type": "diff", "stop": 200.0},
                    {"label": "c", "type": "full", "stop": 300.0}]}
    drills = [{"time": "2026-01-28T03:00:00+00:00", "duration_seconds": 12.5, "result": "ok"},
              {"time": "2026-02-01T03:00:00+00:00", "duration_seconds": 4.0, "result": "failed"}]
    found = metric_values(observed, drills)
    assert found[("pgrunbook_pitr_status_exit_code", None)] == 1
    assert found[("pgrunbook_pitr_wal_last_archived_timestamp_seconds", None)] == 900
    assert found[("pgrunbook_pitr_archive_failures", None)] == 3
    assert found[("pgrunbook_pitr_archive_failing", None)] == 1
    assert math.isnan(found[("pgrunbook_pitr_wal_waiting_segments", None)])  # no pg_monitor: unknown
    assert math.isnan(found[("pgrunbook_pitr_wal_oldest_waiting_timestamp_seconds", None)])
    assert found[("pgrunbook_pitr_backup_last_timestamp_seconds", "full")] == 300
    assert found[("pgrunbook_pitr_backups", "full")] == 2 and found[("pgrunbook_pitr_backups", "diff")] == 1
    assert found[("pgrunbook_pitr_backup_last_timestamp_seconds", "incr")] == 0
    ended = datetime(2026, 2, 1, 3, 0, 4, tzinfo=timezone.utc).timestamp()
    assert found[("pgrunbook_pitr_drill_last_timestamp_seconds", None)] == ended
    assert found[("pgrunbook_pitr_drill_last_success", None)] == 0
    assert found[("pgrunbook_pitr_drill_last_duration_seconds", None)] == 4
    assert pitr_metrics.values(observed, drills[:1])[-1].value == 1
