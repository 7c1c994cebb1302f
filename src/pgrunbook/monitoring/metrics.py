"""Prometheus metrics: the node_exporter textfile collector's file, and ``status --format=prometheus``.

After every work-log line (the CLI registers ``install`` per env, like the
notifier) and on every ``status``, METRICS_FILE is rewritten atomically: the
text goes to a temporary file in the same folder, then ``rename`` (that is
prometheus_client's ``write_to_textfile``), so the collector never reads half
a file. One file may serve several envs (METRICS_FILE in the shared ``.env``):
it then holds every env of the folder whose METRICS_FILE is the same path.

Everything comes from the host's files, never the database: the work log
(last backup and restore-test runs) and the inventory (backups, verified,
suspect); with PITR_STANZA also what the last ``pitr-status`` saw
(pitr_metrics). "Never" is 0 for timestamps and success, so that an alert such as
``time() - pgrunbook_backup_last_verified_timestamp_seconds > 26*3600``
fires for an env that never had a verified backup.

prometheus-client is the optional extra ``metrics`` (``pip install -e '.[metrics]'``);
it is imported only when metrics are asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings, sibling_settings

if TYPE_CHECKING:
    from pgrunbook.store.inventory import Inventoried

BACKUP_TASKS = ("backup", "backup-sql")
RESTORE_TEST_TASK = "verify-restore-test"
# restore.drill.TASK and offsite.keydrill.TASK, named here: this module is imported by every
# task (cli.py), those modules are not (tests/unit/monitoring keeps the names in step)
RESTORE_DRILL_TASK = "restore-drill"
KEY_DRILL_TASK = "key-drill"
SUCCESS_RESULTS = ("ok", "suspect")  # a suspect backup is a good file whose content looks wrong

# the key drill's gauges: only for envs with OFFSITE_BUCKET (nothing to drill without one)
KEY_DRILL_METRICS: dict[str, str] = {
    "pgrunbook_key_drill_last_success_timestamp_seconds":
        "End of the last key drill that passed (key-drill: the escrowed age identity decrypted the "
        "newest offsite copy, UNIX time); 0 if none",
    "pgrunbook_key_drill_last_success": "1 if the last key drill passed, else 0",
}

# name -> help; every metric has the one label ``env``
METRICS: dict[str, str] = {
    "pgrunbook_backup_last_timestamp_seconds":
        "End of the last backup run (UNIX time), whatever its result; 0 if none",
    "pgrunbook_backup_last_duration_seconds": "Duration of the last backup run",
    "pgrunbook_backup_last_success": "1 if the last backup run produced a backup, else 0",
    "pgrunbook_backup_last_success_timestamp_seconds":
        "End of the last backup run that produced a backup (UNIX time); 0 if none",
    "pgrunbook_backup_last_size_bytes": "Size of the backup made by the last successful run",
    "pgrunbook_backup_last_verified_timestamp_seconds":
        "Creation time of the newest verified backup (UNIX time), as status uses it; 0 if none",
    "pgrunbook_restore_test_last_timestamp_seconds":
        "End of the last restore test (verify --restore-test, UNIX time); 0 if none",
    "pgrunbook_restore_test_last_duration_seconds": "Duration of the last restore test",
    "pgrunbook_restore_test_last_success": "1 if the last restore test passed, else 0",
    "pgrunbook_restore_drill_last_success_timestamp_seconds":
        "End of the last restore drill that passed (restore-drill line of verify --restore-test, "
        "UNIX time); 0 if none",
    "pgrunbook_backups": "Number of database backups in the env's backup folder",
    "pgrunbook_backups_verified": "Number of those that passed verify (same sha256)",
    "pgrunbook_backups_suspect": "Number of those whose manifest marks them suspect",
    "pgrunbook_backup_last_suspect": "1 if the newest backup's manifest marks it suspect, else 0",
    "pgrunbook_backups_future":
        "Number of backups dated in the future (a clock was wrong); never counted as the newest",
}


def _suspect(item: Inventoried) -> bool:
    manifest = item.backup.manifest() if item.made_by_kit else None
    return bool(manifest and manifest.get("suspect"))


@dataclass(frozen=True)
class EnvMetrics:
    env: str
    values: dict[str, float]


def collect_env(settings: Settings) -> EnvMetrics:
    """One env's values, from its work log and its backup folder."""
    from pgrunbook.store import inventory  # start-up time: imported when metrics are written
    from pgrunbook.store.catalog import FUTURE_TOLERANCE  # start-up time, as above

    # a run logged under a clock that was ahead is never "the last run" (it would read as
    # fresh for as long as it is ahead), as a backup dated in the future is never the newest
    horizon = time.time() + FUTURE_TOLERANCE.total_seconds()
    records = [r for r in worklog.read(settings.worklog_path)
               if r.get("env") == settings.env and (worklog.started_at(r) or 0.0) <= horizon]
    backups = [r for r in records if r.get("task") in BACKUP_TASKS]
    good = [r for r in backups if r.get("result") in SUCCESS_RESULTS]
    tests = [r for r in records if r.get("task") == RESTORE_TEST_TASK]
    passed_drills = [r for r in records if r.get("task") == RESTORE_DRILL_TASK and r.get("result") == "ok"]
    last, last_good = (backups[-1] if backups else None), (good[-1] if good else None)
    last_test = tests[-1] if tests else None
    everything = inventory.inventory(settings, with_globals=False)
    items = [i for i in everything if not i.future]
    verified = [i for i in items if i.verified and i.valid]
    return EnvMetrics(settings.env, {
        "pgrunbook_backup_last_timestamp_seconds": worklog.ended_at(last),
        "pgrunbook_backup_last_duration_seconds": float((last or {}).get("duration_seconds") or 0),
        "pgrunbook_backup_last_success": float(bool(last and last.get("result") in SUCCESS_RESULTS)),
        "pgrunbook_backup_last_success_timestamp_seconds": worklog.ended_at(last_good),
        "pgrunbook_backup_last_size_bytes": float((last_good or {}).get("size") or 0),
        "pgrunbook_backup_last_verified_timestamp_seconds":
            verified[-1].backup.created.timestamp() if verified else 0.0,
        "pgrunbook_restore_test_last_timestamp_seconds": worklog.ended_at(last_test),
        "pgrunbook_restore_test_last_duration_seconds":
            float((last_test or {}).get("duration_seconds") or 0),
        "pgrunbook_restore_test_last_success": float(bool(last_test and last_test.get("result") == "ok")),
        "pgrunbook_restore_drill_last_success_timestamp_seconds":
            worklog.ended_at(passed_drills[-1] if passed_drills else None),
        "pgrunbook_backups": float(len(everything)),
        "pgrunbook_backups_verified": float(sum(1 for i in everything if i.verified)),
        "pgrunbook_backups_suspect": float(sum(1 for i in everything if _suspect(i))),
        "pgrunbook_backup_last_suspect": float(bool(items and _suspect(items[-1]))),
        "pgrunbook_backups_future": float(len(everything) - len(items)),
        **_key_drill_values(settings, records),
    })


def _key_drill_values(settings: Settings, records: list[dict]) -> dict[str, float]:
    if not settings.offsite_bucket:
        return {}
    drills = [r for r in records if r.get("task") == KEY_DRILL_TASK]
    passed = [r for r in drills if r.get("result") == "ok"]
    return {
        "pgrunbook_key_drill_last_success_timestamp_seconds":
            worklog.ended_at(passed[-1] if passed else None),
        "pgrunbook_key_drill_last_success": float(bool(drills and drills[-1].get("result") == "ok")),
    }


def envs_of_file(settings: Settings) -> list[Settings]:
    """This env, and the envs of the same folder that write the same METRICS_FILE."""
    if settings.metrics_file is None:
        return [settings]
    others = [s for s in sibling_settings(settings) if s.metrics_file == settings.metrics_file]
    return sorted([settings, *others], key=lambda s: s.env)


def _client():
    try:
        import prometheus_client
    except ImportError:
        raise RunbookError(
            "Prometheus のメトリクスには prometheus-client が必要です",
            "pip install -e '.[metrics]' を実行（または METRICS_FILE を空にする）",
            exit_code=2,
        ) from None
    return prometheus_client


def registry_for(settings: Settings):
    client = _client()
    registry = client.CollectorRegistry(auto_describe=True)
    gauges = {name: client.Gauge(name, text, ["env"], registry=registry)
              for name, text in {**METRICS, **KEY_DRILL_METRICS}.items()}
    envs = envs_of_file(settings)
    for env_settings in envs:
        collected = collect_env(env_settings)
        for name, value in collected.values.items():
            gauges[name].labels(env=collected.env).set(value)
    from pgrunbook.monitoring import pitr_metrics  # start-up time: its gauges only for envs with PITR_STANZA

    pitr_metrics.register(client, registry, envs)
    return registry


def text(settings: Settings) -> str:
    """The exposition text (what ``status --format=prometheus`` prints)."""
    return _client().generate_latest(registry_for(settings)).decode("utf-8")


def write(settings: Settings, console: Console) -> bool:
    """Rewrite METRICS_FILE atomically; a failure is a warning (never the task's outcome)."""
    path = settings.metrics_file
    if path is None:
        return False
    try:
        registry = registry_for(settings)
        if not path.parent.is_dir():
            raise RunbookError(
                f"METRICS_FILE のディレクトリ {path.parent} がありません",
                "node_exporter の --collector.textfile.directory を確認し、METRICS_FILE を直す",
            )
        _client().write_to_textfile(str(path), registry)
    except RunbookError as error:
        console.warn(f"メトリクスを書けませんでした: {error.one_line()}")
        return False
    except OSError as error:
        console.warn(f"メトリクス {path} を書けませんでした: {error.strerror or error}"
                     "（書き込み権限を確認。タスクの結果は変わりません）")
        return False
    return True


def install(settings: Settings, console: Console) -> None:
    """Rewrite METRICS_FILE after every work-log line of this env (called by cli.settings_for)."""
    if settings.metrics_file is None:
        worklog.set_notifier(settings.env, None, name="metrics")
        return
    worklog.set_notifier(settings.env, lambda _record: write(settings, console), name="metrics")
