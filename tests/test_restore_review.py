"""Review of issue 11's restore trust work against 2 a.m. failure modes, on the real
engine: Ctrl-C and SIGTERM at every stage, what restore-recover may touch, and the
journal's idea of a run that is still alive."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import PASSWORD
from test_backup import table_fingerprints
from test_recovery import allows_connections, app_container, uploads  # noqa: F401 - fixture
from test_restore import backup, databases, log_lines, target  # noqa: F401 - fixture

JOURNAL = ".restore-in-progress.json"


@pytest.mark.parametrize(("stage", "name"), [
    ("upload", "INT"), ("staging-restore", "TERM"), ("checks", "INT"),
    ("apps-stopped", "TERM"), ("swap", "TERM"), ("swap", "INT"),
])
def test_ctrl_c_or_sigterm_at_each_stage_leaves_nothing_to_recover(
        cli, pg, target, app_container, stage, name):  # noqa: F811
    """A signal the kit can catch is not a kill -9: the run puts everything right
    itself, says so, and leaves no journal that would send the operator to
    restore-recover for nothing (nor removes one while something is left)."""
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_PASSWORD=PASSWORD,
                  APP_CONTAINERS=app_container.name)
    dump = backup(cli, "--env=prod")
    old = table_fingerprints(pg, target)
    pg.psql("INSERT INTO public.votes (topic, member_id, choice, cast_at) VALUES "
            "('バックアップ後の投票', 1, '賛成', now())", target)
    live = table_fingerprints(pg, target)
    stopped = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", "--jobs=2",
                  env={"PGRUNBOOK_TEST_KILL_AT": stage, "PGRUNBOOK_TEST_KILL_SIGNAL": name})
    assert stopped.returncode not in (0, -signal.SIGKILL), stopped.stderr
    assert "Traceback" not in stderr_of(stopped)
    time.sleep(0.5)
    assert allows_connections(pg, target) == "t"
    assert table_fingerprints(pg, target) in (old, live)
    assert not [d for d in databases(pg) if d.startswith(target) and "_staging_" in d]
    assert not uploads(pg)
    app_container.reload()
    assert app_container.status == "running"
    assert not (cli.backup_dir("prod") / JOURNAL).exists(), stopped.stderr
    assert log_lines(cli)[-1]["result"] != "started"


def stderr_of(result) -> str:
    return result.stderr or ""

