"""The engine loses an exec's output (moby#27289): every answer is whole, or the kit says so.

The seam in infra/container.py plays the engine: the command really runs, its
output does not arrive, its exit code does. Aimed by pattern and count here;
tests/e2e/infra/test_lost_outputs_flows.py drops outputs at random across the
key flows.
"""

from __future__ import annotations

import json

import pytest

from helpers import (
    backup,
    backup_like_files,
    databases,
    last_line,
    one_clean_line,
    replace_scenario,
    table_fingerprints,
)
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import load_settings
from pgrunbook.infra.container import Container
from pgrunbook.infra.framing import LostAnswer
from pgrunbook.infra.postgres import Ask, Postgres


def kit_postgres(cli, pg, env: str = "prod") -> Postgres:
    return Postgres(Container(pg.client, pg.container), load_settings(env, cli.home))


@pytest.mark.matrix
def test_a_lost_answer_of_a_read_is_asked_again_never_read_as_empty(cli, pg, lost_outputs, monkeypatch):
    postgres = kit_postgres(cli, pg)
    for name, value in lost_outputs.env(match="FROM pg_database WHERE datname", nth="1").items():
        monkeypatch.setenv(name, value)
    # unframed, the lost answer was "no rows": the live database "did not exist"
    assert postgres.database_exists("app")
    assert len(lost_outputs.dropped()) == 1
    for name, value in lost_outputs.env(match="server_version", nth="1,2").items():
        monkeypatch.setenv(name, value)
    assert postgres.facts("app").version == pg.version  # was an IndexError
    assert len(lost_outputs.dropped()) == 3


def test_reads_batched_in_one_exec_answer_as_one_by_one_and_a_lost_batch_is_asked_again(
        cli, pg, lost_outputs, monkeypatch):
    postgres = kit_postgres(cli, pg)
    asks = [Ask("SELECT 'batched', 1"), Ask("SELECT datname FROM pg_database WHERE datname = 'postgres'",
                                            "postgres"), Ask("SELECT 1 WHERE false")]
    expected = [postgres.query(ask.sql, ask.database) for ask in asks]
    for name, value in lost_outputs.env(match="'batched'", nth="1").items():
        monkeypatch.setenv(name, value)
    assert postgres.queries(asks) == expected == [[["batched", "1"]], [["postgres"]], []]
    assert len(lost_outputs.dropped()) == 1
    with pytest.raises(RunbookError) as raised:  # the failing read's own error, as by itself
        postgres.queries([asks[0], Ask("SELECT 1", "no_such_database")])
    assert "no_such_database" in raised.value.message


def test_a_short_exec_that_is_not_psql_is_framed_too(pg, lost_outputs, monkeypatch):
    container = Container(pg.client, pg.container)
    for name, value in lost_outputs.env(match="^df ", nth="1").items():
        monkeypatch.setenv(name, value)
    result = container.run(["df", "-Pk", "/tmp"])
    assert result.ok and result.stdout.startswith(b"Filesystem") and len(result.stdout.splitlines()) == 2
    assert len(lost_outputs.dropped()) == 1


def test_an_answer_lost_every_time_is_one_line_not_an_empty_result(cli, pg, lost_outputs, monkeypatch):
    postgres = kit_postgres(cli, pg)
    for name, value in lost_outputs.env(rate=1, match="FROM pg_database").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(LostAnswer) as raised:
        postgres.databases()
    assert "応答が届きませんでした" in raised.value.message and "4 回とも" in raised.value.message
    assert len(lost_outputs.dropped()) == 4


def test_check_with_every_answer_lost_says_so_in_one_line(cli, lost_outputs):
    result = cli("check", "--env=prod", env=lost_outputs.env(rate=1, match="psql"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "IndexError" not in result.stderr + result.stdout
    assert "応答が届きませんでした" in result.stdout + result.stderr
    assert lost_outputs.dropped()


@pytest.mark.parametrize("kind", ["all", "head:512"])
@pytest.mark.parametrize("fmt", ["backup", "backup-sql"])
def test_a_lost_start_of_the_dump_stream_keeps_no_backup(cli, lost_outputs, kind, fmt):
    result = cli(fmt, "--env=prod", env=lost_outputs.env(rate=1, match="^pg_dump ", kind=kind))
    line = one_clean_line(result)
    assert len(lost_outputs.dropped()) == 1, lost_outputs.dropped()
    assert backup_like_files(cli.backup_dir("prod")) == [], line


@pytest.mark.matrix
def test_a_lost_end_of_the_dump_stream_keeps_no_backup(cli, lost_outputs):
    result = cli("backup", "--env=prod", env=lost_outputs.env(rate=1, match="^pg_dump ", kind="tail:700"))
    one_clean_line(result)
    assert backup_like_files(cli.backup_dir("prod")) == []


@pytest.mark.matrix
def test_lost_row_counts_are_not_recorded_as_zero_tables(cli, lost_outputs):
    """The snapshot session's counts come at its end: lost, the backup says it has none."""
    result = cli("backup", "--env=prod", env=lost_outputs.env(
        rate=1, match=r"^psql .*-R \x1e$", kind="after:64"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((cli.backup_dir("prod") / (last_line(result.stdout).rsplit("/", 1)[-1] + ".json"))
                          .read_text())
    assert manifest["row_counts"] == "none"
    assert manifest["tables"] and all(table["rows"] == -1 for table in manifest["tables"])
    assert "行数を数えられませんでした" in result.stderr


def test_a_lost_snapshot_answer_opens_another_session(cli, lost_outputs):
    result = cli("backup", "--env=prod", env=lost_outputs.env(match=r"^psql .*-R \x1e$", nth="1"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((cli.backup_dir("prod") / (last_line(result.stdout).rsplit("/", 1)[-1] + ".json"))
                          .read_text())
    assert manifest["row_counts"] == "exact-same-snapshot"
    assert len(lost_outputs.dropped()) == 1


def test_a_lost_table_of_contents_is_asked_again_not_a_backup_without_data(cli, lost_outputs):
    dump = backup(cli, "--env=prod")
    result = cli("verify", "--env=prod", f"--file={dump}",
                 env=lost_outputs.env(match="^pg_restore --list", nth="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lost_outputs.dropped()) == 1


def test_a_lost_swap_verdict_is_read_from_the_server_not_reported_as_a_failure(
        cli, pg, target, app_container, lost_outputs):
    dump, old, live = replace_scenario(cli, pg, target, app_container)
    lost = lost_outputs.env(rate=1, match="pgrunbook:verdict")
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=lost)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lost_outputs.dropped()) == 1
    assert table_fingerprints(pg, target) == old
    previous = [d for d in databases(pg) if d.startswith(target) and "_previous_" in d]
    assert len(previous) == 1
    # the rollback's swap loses its verdict too: still one clean success
    result = cli("restore-rollback", "--env=prod", f"--previous={previous[0]}", "--confirm=prod", env=lost)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lost_outputs.dropped()) == 2
    assert table_fingerprints(pg, target) == live  # the row added after the backup is back
    assert not (cli.backup_dir("prod") / ".restore-in-progress.json").exists()
