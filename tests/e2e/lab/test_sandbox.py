"""sandbox-up / sandbox-down: a newcomer's practice database, and the README's main job."""

from __future__ import annotations

import uuid

from helpers import IMAGE, last_line


def test_sandbox_then_backup_then_down(tmp_path, docker_engine):
    from helpers import Cli

    cli = Cli(tmp_path)
    name = f"pgrunbook-sandbox-{uuid.uuid4().hex[:6]}"
    cli.write_env("dev", DB_CONTAINER=name, SANDBOX_IMAGE=IMAGE, DB_PASSWORD="sandbox-pw")
    try:
        up = cli("sandbox-up", "--env=dev")
        assert up.returncode == 0, up.stderr
        # no published port: the summary says how to look inside instead
        assert f"docker exec -it -e PGPASSWORD {name} psql -U app -d app" in up.stderr, up.stderr
        again = cli("sandbox-up", "--env=dev")
        assert again.returncode == 0 and "起動済み" in again.stderr
        backup = cli("backup", "--env=dev")
        assert backup.returncode == 0, backup.stderr
        assert last_line(backup.stdout).endswith(".dump")
        verify = cli("verify", "--env=dev")
        assert verify.returncode == 0, verify.stderr
    finally:
        down = cli("sandbox-down", "--env=dev")
    assert down.returncode == 0, down.stderr
    assert not [c for c in docker_engine.containers.list(all=True) if c.name == name]


def test_sandbox_never_touches_a_foreign_container(cli, pg, docker_engine):
    cli.write_env("dev", DB_CONTAINER=pg.name, DB_NAME="app_dev")
    down = cli("sandbox-down", "--env=dev")
    assert down.returncode == 1 and "削除しません" in down.stderr
    up = cli("sandbox-up", "--env=dev")
    assert up.returncode == 1 and "サンドボックスではありません" in up.stderr
    docker_engine.containers.get(pg.name)  # still there
