"""Issue 11, defect 11: two envs that name one container differently (name vs ID)
are still one database. The kit compares the resolved container, not the text."""

from __future__ import annotations

import uuid

import pytest

from helpers import PASSWORD, databases, last_line, start_postgres


@pytest.fixture(scope="module")
def own_pg(docker_engine):
    """A server of its own: on today's code the replace really replaces its 'app'."""
    server = start_postgres(docker_engine, f"pgrunbook-check13-sep-{uuid.uuid4().hex[:8]}")
    server.create_database("app", sample=True)
    yield server
    server.container.remove(force=True, v=True)


def test_dev_with_prods_container_id_is_refused_before_touching_prod(cli, own_pg):
    cli.write_env("prod", DB_CONTAINER=own_pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD)
    made = cli("backup", "--env=prod")
    assert made.returncode == 0, made.stderr
    prod_file = last_line(made.stdout)
    before = databases(own_pg)

    for reference in (own_pg.container.id, own_pg.container.id[:12]):
        cli.write_env("dev", DB_CONTAINER=reference, DB_NAME="app", DB_PASSWORD=PASSWORD)
        replaced = cli("restore-replace", "--env=dev", f"--file={prod_file}", "--confirm=dev")
        assert replaced.returncode == 2, replaced.stdout + replaced.stderr
        assert "同じ DB" in replaced.stderr and "prod" in replaced.stderr, replaced.stderr
        assert databases(own_pg) == before  # no staging, no previous, prod's app untouched

        backed = cli("backup", "--env=dev")
        assert backed.returncode == 2, backed.stderr
        assert "同じ DB" in backed.stderr
        assert not cli.backup_dir("dev").exists() or not any(cli.backup_dir("dev").glob("*.dump"))

    # the same container under its name is refused already by the files alone
    cli.write_env("dev", DB_CONTAINER=own_pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD)
    assert cli("backup", "--env=dev").returncode == 2
