"""The apps a replace stopped run again, or the journal names them until they do:
an interruption while they start again (Ctrl-C, SIGTERM, kill -9) must not leave
an app stopped that nothing names. ``invoke check`` says NG while one is, and
restore-recover starts it."""

from __future__ import annotations

import json
import signal
import uuid

import pytest

from helpers import APP_COMMAND, IMAGE, PASSWORD, backup, table_fingerprints

JOURNAL = ".restore-in-progress.json"


@pytest.fixture
def five_apps(docker_engine):
    apps = [docker_engine.containers.run(IMAGE, APP_COMMAND, entrypoint=[], detach=True, network_mode="none",
                                         name=f"pgrunbook-app-{uuid.uuid4().hex[:6]}",
                                         labels={"pgrunbook.test": "1"}) for _ in range(5)]
    yield apps
    for app in apps:
        app.remove(force=True)


def stopped(apps) -> list[str]:
    for app in apps:
        app.reload()
    return [app.name for app in apps if app.status != "running"]


def replace_interrupted(cli, pg, target, apps, kill_signal: str, times: int):
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_PASSWORD=PASSWORD,
                  APP_CONTAINERS=",".join(app.name for app in apps))
    dump = backup(cli, "--env=prod")
    # a run started in the background by a shell ignores SIGINT (and so would the kit):
    # give the kit a SIGINT it can receive, as on a terminal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return dump, cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                         env={"PGRUNBOOK_TEST_KILL_AT": "apps-start", "PGRUNBOOK_TEST_KILL_SIGNAL": kill_signal,
                              "PGRUNBOOK_TEST_KILL_TIMES": str(times)})
    finally:
        signal.signal(signal.SIGINT, previous)


def check_lines(cli) -> tuple[int, list[str]]:
    done = cli("check", "--env=prod")
    return done.returncode, [line for line in done.stdout.splitlines() if line.startswith("NG")]


def test_one_ctrl_c_as_the_apps_start_again_still_starts_every_one(cli, pg, target, five_apps):
    _, result = replace_interrupted(cli, pg, target, five_apps, "INT", times=1)
    assert result.returncode == 130 or "中断" in result.stderr, result.stderr
    assert "切り替えは完了しています" in result.stderr, result.stderr
    assert stopped(five_apps) == []
    assert not (cli.backup_dir("prod") / JOURNAL).exists()


@pytest.mark.parametrize("kill_signal", ["INT", "TERM", "KILL"])
def test_apps_left_stopped_by_an_interruption_are_named_kept_in_the_journal_and_recovered(
        cli, pg, target, five_apps, kill_signal):
    """Ctrl-C twice (or SIGTERM twice) as the first app starts again, or a kill -9 then:
    the swap is done, the apps are stopped, and every later step says so."""
    dump, result = replace_interrupted(cli, pg, target, five_apps, kill_signal, times=2)
    assert result.returncode != 0
    left = stopped(five_apps)
    assert left, result.stderr  # the interruption came before any app was started again
    if kill_signal != "KILL":
        assert "切り替えは完了しています" in result.stderr, result.stderr
        assert all(name in result.stderr for name in left), result.stderr
        assert "restore-recover --env=prod" in result.stderr
    record = json.loads((cli.backup_dir("prod") / JOURNAL).read_text())
    assert sorted(record["apps_stopped"]) == sorted(left)
    code, failing = check_lines(cli)
    assert code == 2 and any(all(name in line for name in left) for line in failing), failing
    noticed = cli("list", "--env=prod")
    assert all(name in noticed.stderr for name in left), noticed.stderr
    repaired = cli("restore-recover", "--env=prod", "--confirm=prod")
    assert repaired.returncode == 0, repaired.stderr
    assert stopped(five_apps) == []
    assert not (cli.backup_dir("prod") / JOURNAL).exists()
    code, failing = check_lines(cli)
    assert not [line for line in failing if "中断" in line or "アプリ" in line], failing
    before = table_fingerprints(pg, target)
    again = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert again.returncode == 0, again.stderr
    assert table_fingerprints(pg, target) == before
