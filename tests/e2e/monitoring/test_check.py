"""``invoke check`` (issue 13): the 事前確認 on one screen, against the real engine."""

from __future__ import annotations

import uuid

from helpers import IMAGE, PASSWORD, last_line
from helpers.loopback_http import SilentServer


def lines_of(done) -> dict[str, list[str]]:
    """topic -> the lines of that topic (level first)."""
    found: dict[str, list[str]] = {}
    for line in done.stdout.splitlines()[:-1]:
        level, _, rest = line.partition(" ")
        topic = rest.strip().split(":", 1)[0]
        found.setdefault(topic, []).append(level + " " + rest.strip())
    return found


def private(cli) -> None:
    for path in cli.home.glob(".env*"):
        path.chmod(0o600)


def test_a_fresh_env_warns_with_what_to_do(cli, pg):
    private(cli)
    done = cli("check", "--env=prod")
    assert done.returncode == 1, done.stdout + done.stderr
    found = lines_of(done)
    assert found["コンテナ"][0].startswith("OK") and pg.container.id[:12] in found["コンテナ"][0]
    assert "kit-postgres" in found["コンテナ"][0] or "postgres" in found["コンテナ"][0]
    assert found["DB"][0].startswith("OK") and "PostgreSQL 15" in found["DB"][0]
    assert found["分離"][0].startswith("OK") and "dev" in found["分離"][0]
    assert found["権限"][0].startswith("OK")  # the test's app user is a superuser
    assert found["最新のバックアップ"][0].startswith("WARN") and "invoke backup --env=prod" in \
        found["最新のバックアップ"][0]
    assert "cron" in found and "エンジン" in found and "設定ファイル" in found
    assert last_line(done.stdout).startswith("事前確認 env=prod: OK ")
    assert all(line.split()[0] in ("OK", "WARN", "NG") for line in done.stdout.splitlines()[:-1])
    assert PASSWORD not in done.stdout + done.stderr
    assert not (cli.home / "backups" / "prod").exists()  # check changes nothing


def test_after_backup_and_drill_the_backup_lines_are_ok(cli, pg):
    private(cli)
    assert cli("backup", "--env=prod").returncode == 0
    assert cli("verify", "--env=prod", "--restore-test").returncode == 0
    done = cli("check", "--env=prod")
    found = lines_of(done)
    for topic in ("最新のバックアップ", "復元訓練", "バックアップ先", "空き容量", "設定ファイル"):
        assert found[topic][0].startswith("OK"), found[topic]
    assert "0700" in found["バックアップ先"][0]
    assert done.returncode in (0, 1)  # cron / volume lines depend on the machine


def test_prod_and_dev_on_one_container_are_a_loud_ng(cli, pg):
    private(cli)
    cli.write_env("dev", DB_CONTAINER=pg.container.id, DB_NAME="app", DB_PASSWORD=PASSWORD)
    for env in ("dev", "prod"):
        done = cli("check", f"--env={env}")
        assert done.returncode == 2
        separation = lines_of(done)["分離"][0]
        assert separation.startswith("NG") and "!!!" in separation and "同じ DB" in separation
        assert "NG を直すまで作業しない" in last_line(done.stdout)


def test_missing_container_is_ng_and_the_rest_is_still_checked(cli, pg):
    cli.write_env("prod", DB_CONTAINER="pgrunbook-check13-nothing-here", DB_NAME="app")
    private(cli)
    done = cli("check", "--env=prod")
    assert done.returncode == 2
    found = lines_of(done)
    assert found["コンテナ"][0].startswith("NG") and "見つかりません" in found["コンテナ"][0]
    assert "DB" not in found
    assert "バックアップ先" in found and "最新のバックアップ" in found


def test_loose_env_file_mode_is_a_warning_with_chmod(cli, pg):
    private(cli)
    (cli.home / ".env.dev").chmod(0o644)
    found = lines_of(cli("check", "--env=prod"))
    assert found["設定ファイル"][0].startswith("WARN")
    assert "chmod 600" in found["設定ファイル"][0] and ".env.dev" in found["設定ファイル"][0]


def test_a_user_without_privileges_is_told_what_to_grant(cli, pg):
    role = f"check13_{uuid.uuid4().hex[:6]}"
    pg.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'", "postgres")
    try:
        cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_USER=role,
                      DB_PASSWORD=PASSWORD)
        private(cli)
        done = cli("check", "--env=prod")
        assert done.returncode == 2
        found = lines_of(done)
        assert found["権限（バックアップ）"][0].startswith("NG")
        assert f"GRANT pg_read_all_data TO {role}" in found["権限（バックアップ）"][0]
        replace = found["権限（置き換え）"][0]
        assert replace.startswith("WARN")
        assert "CREATEDB" in replace and "pg_signal_backend" in replace and "OWNER TO" in replace

        pg.psql(f"GRANT pg_read_all_data TO {role}", "postgres")
        found = lines_of(cli("check", "--env=prod"))
        assert found["権限（バックアップ）"][0].startswith("OK")
        assert cli("backup", "--env=prod").returncode == 0  # the check said so, and it is so
    finally:
        pg.psql(f"DROP ROLE {role}", "postgres")


def test_offsite_reachability_with_a_short_timeout(cli, pg):
    import boto3
    from moto.server import ThreadedMotoServer

    private(cli)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    credentials = {"AWS_ACCESS_KEY_ID": "check13", "AWS_SECRET_ACCESS_KEY": "check13"}
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                     **{k.lower(): v for k, v in credentials.items()}).create_bucket(Bucket="check13")
        values = {"DB_CONTAINER": pg.name, "DB_NAME": "app", "DB_PASSWORD": PASSWORD,
                  "OFFSITE_BUCKET": "check13", "OFFSITE_REGION": "us-east-1"}
        cli.write_env("prod", OFFSITE_ENDPOINT_URL=url, **values)
        private(cli)
        found = lines_of(cli("check", "--env=prod", env=credentials))
        assert found["オフサイト"][0].startswith("OK") and "s3://check13/prod/" in found["オフサイト"][0]
    finally:
        server.stop()
    # the same port, nobody listening: NG, one line, no traceback
    cli.write_env("prod", OFFSITE_ENDPOINT_URL=url, **values)
    private(cli)
    done = cli("check", "--env=prod", env=credentials)
    found = lines_of(done)
    assert done.returncode == 2 and found["オフサイト"][0].startswith("NG"), done.stdout
    assert "Traceback" not in done.stderr
    # an endpoint that accepts and never answers: a short try and botocore's one retry (not the
    # push's four attempts of two minutes each), then NG
    hung = SilentServer()
    try:
        cli.write_env("prod", OFFSITE_ENDPOINT_URL=f"http://127.0.0.1:{hung.port}", **values)
        private(cli)
        done = cli("check", "--env=prod", env=credentials, timeout=120)
        found = lines_of(done)
        assert done.returncode == 2 and found["オフサイト"][0].startswith("NG"), done.stdout
        assert len(hung.connections) in (1, 2), len(hung.connections)
    finally:
        hung.close()


def test_check_works_on_a_compose_labelled_container(cli, pg, docker_engine):
    """DB_SERVICE: the check shows the resolved name and the Compose labels."""
    project = f"check13{uuid.uuid4().hex[:6]}"
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": "db",
              "com.docker.compose.container-number": "1"}
    # a stopped labelled container: the error path (test_discovery runs a labelled server)
    model = docker_engine.containers.create(
        IMAGE, ["true"], name=f"pgrunbook-check13-{project}-db-1",
        labels={"pgrunbook.test": "1", **labels}, network_mode="none")
    try:
        cli.write_env("prod", DB_SERVICE="db", COMPOSE_PROJECT=project, DB_NAME="app")
        private(cli)
        done = cli("check", "--env=prod")
        container = lines_of(done)["コンテナ"][0]
        assert container.startswith("NG") and "稼働していません" in container
        assert f"docker compose -p {project} up -d db" in container
    finally:
        model.remove(force=True)
