"""The runbook's hand procedures really work: run the generated commands with bash.

The "手作業" tabs of the site show exactly these lines (pgrunbook.manual); here
they run against the real test container through the docker CLI, as an
operator would paste them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from helpers import PASSWORD, databases
from pgrunbook.core.settings import load_settings
from pgrunbook.infra import manual
from pgrunbook.store import catalog

pytestmark = pytest.mark.docker

WHEN = datetime(2026, 1, 28, 2, 0, 0)

TABLES = ("public.members", "accounting.journal_entries", "accounting.approvals", "public.votes",
          "audit.audit_log", "public._prisma_migrations")


def run_lines(lines: list[str], cwd: Path) -> str:
    """Paste the lines into bash (stops at the first failing one)."""
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    environment = {**os.environ, "PGPASSWORD": PASSWORD}
    done = subprocess.run(["bash", "-c", script], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def counts(pg, database: str) -> dict[str, int]:
    return {table: int(pg.psql(f"SELECT count(*) FROM {table}", database).strip()) for table in TABLES}


@pytest.fixture
def procedure(tmp_path, pg):
    if shutil.which("docker") is None:
        pytest.skip("docker CLI がありません")
    live = f"manual_{uuid.uuid4().hex[:8]}"
    (tmp_path / ".env.prod").write_text(
        f"DB_CONTAINER={pg.name}\nDB_NAME={live}\nDB_PASSWORD={PASSWORD}\n", encoding="utf-8"
    )
    pg.create_database(live, sample=True)
    settings = load_settings("prod", tmp_path)
    yield settings
    for name in databases(pg):
        if name.startswith(live):
            pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres")


def test_hand_backup_scratch_replace_rollback_and_drop(procedure, pg, tmp_path):
    settings, live = procedure, procedure.db_name
    original = counts(pg, live)
    assert original["public.members"] > 0

    # バックアップ（カスタム形式）と検証
    dump = settings.backup_dir / catalog.backup_name("knot", "prod", WHEN, "custom")
    run_lines(manual.backup_commands(settings, "custom", dump), tmp_path)
    run_lines(manual.verify_commands(settings, dump), tmp_path)

    # B. 別 DB に戻す: the live database is not touched
    scratch = f"{live}_restore_1"
    output = run_lines(manual.restore_scratch_commands(settings, dump, scratch), tmp_path)
    assert counts(pg, scratch) == original
    assert "members" in output

    # A. 置き換え while a session holds the live database, after a mistake in it
    pg.psql("DELETE FROM public.votes", live)
    damaged = counts(pg, live)
    holder = pg.client.api.exec_create(
        pg.container.id, ["psql", "-U", "app", "-d", live, "-c", "SELECT pg_sleep(120)"],
        environment={"PGPASSWORD": PASSWORD})
    pg.client.api.exec_start(holder["Id"], detach=True)
    staging, previous = f"{live}_staging_1", f"{live}_before_1"
    run_lines(manual.restore_replace_commands(settings, dump, staging, previous), tmp_path)
    assert counts(pg, live) == original
    assert counts(pg, previous) == damaged  # the previous database is kept
    assert staging not in databases(pg)

    # ロールバック, then remove the database that stepped aside
    failed = f"{live}_failed_1"
    run_lines(manual.rollback_commands(settings, previous, failed), tmp_path)
    assert counts(pg, live) == damaged
    run_lines(manual.drop_database_commands(settings, failed), tmp_path)
    assert failed not in databases(pg) and live in databases(pg)


def test_hand_sql_backup_and_restore(procedure, pg, tmp_path):
    settings, live = procedure, procedure.db_name
    original = counts(pg, live)
    sql = settings.backup_dir / catalog.backup_name("knot", "prod", WHEN, "plain")
    run_lines(manual.backup_commands(settings, "plain", sql), tmp_path)
    run_lines(manual.verify_commands(settings, sql), tmp_path)
    test_db = f"{live}_verify_1"
    run_lines(manual.restore_test_commands(settings, sql, test_db), tmp_path)
    assert test_db not in databases(pg)
    scratch = f"{live}_restore_1"
    run_lines(manual.restore_scratch_commands(settings, sql, scratch), tmp_path)
    assert counts(pg, scratch) == original


def test_hand_check_commands_run(procedure, pg, tmp_path):
    """The 事前確認 manual tab: every line runs (crontab may be absent or empty)."""
    lines = manual.check_commands(procedure)
    folder = procedure.backup_dir
    folder.mkdir(parents=True, mode=0o700)
    runnable = [line for line in lines if not line.startswith("crontab")]
    out = run_lines(runnable, tmp_path)
    assert pg.container.id in out and "signal_backend" in out and "rolsuper" in out
    mode = oct(procedure.files[-1].stat().st_mode & 0o777)[2:]
    assert f"{mode} .env.prod" in out


def test_hand_partial_restore_puts_back_the_missing_rows_and_undoes(procedure, pg, tmp_path):
    """C. 一部だけ戻す by hand: a work database, the rows beside the live table, one transaction."""
    settings, live = procedure, procedure.db_name
    pg.psql("CREATE FUNCTION public.vote_audit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN INSERT INTO audit.audit_log (at, action, payload) VALUES (now(), 'trigger', '{}'); "
            "RETURN NEW; END$$; CREATE TRIGGER vote_audit AFTER INSERT ON public.votes FOR EACH ROW "
            "EXECUTE FUNCTION public.vote_audit()", live)
    dump = settings.backup_dir / catalog.backup_name("knot", "prod", WHEN, "custom")
    run_lines(manual.backup_commands(settings, "custom", dump), tmp_path)
    original = counts(pg, live)
    pg.psql("DELETE FROM public.votes WHERE id % 10 = 3", live)
    work = f"{live}_work_1"
    shown = run_lines(manual.partial_commands(settings, dump, work, "public.votes", "id"), tmp_path)
    assert "バックアップにだけ" in shown
    assert counts(pg, live) == original  # the votes are back, and the trigger did not fire
    run_lines(manual.partial_undo_commands(settings, work, "public.votes", "id"), tmp_path)
    assert counts(pg, live)["public.votes"] == original["public.votes"] - 12
    assert work not in databases(pg)
    assert pg.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrunbook_backup'", live).strip() == "0"
