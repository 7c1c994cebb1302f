"""Compose-aware discovery (issue 13): DB_SERVICE / COMPOSE_PROJECT / APP_SERVICES find
containers by the labels Compose sets. Containers are made with those labels through
the Docker SDK (no compose binary)."""

from __future__ import annotations

import json
import uuid

import pytest

from helpers import APP_COMMAND, IMAGE, PASSWORD, last_line, start_postgres

PROJECT = "com.docker.compose.project"

SERVICE = "com.docker.compose.service"

NUMBER = "com.docker.compose.container-number"


def compose_labels(project: str, service: str, number: int = 1) -> dict[str, str]:
    return {PROJECT: project, SERVICE: service, NUMBER: str(number)}


@pytest.fixture(scope="module")
def names():
    tag = uuid.uuid4().hex[:6]
    return {"project": f"check13{tag}", "other": f"check13{tag}b", "db": f"db{tag}",
            "app": f"app{tag}", "tag": tag}


@pytest.fixture(scope="module")
def compose_db(docker_engine, names):
    """A PostgreSQL container labelled as Compose would label <project>-db-1."""
    server = start_postgres(docker_engine, f"pgrunbook-check13-{names['project']}-db-1",
                            labels=compose_labels(names["project"], names["db"]))
    server.create_database("app", sample=True)
    yield server
    server.container.remove(force=True, v=True)


def sleeper(client, name: str, labels: dict[str, str], start: bool = True):
    """A small stand-in for an app container (or a second replica)."""
    model = client.containers.create(IMAGE, APP_COMMAND, name=name, network_mode="none",
                                     labels={"pgrunbook.test": "1", **labels}, entrypoint=[])
    if start:
        model.start()
    return model


@pytest.fixture
def extra(docker_engine):
    made = []
    yield made
    for model in made:
        model.remove(force=True)


def worklog(cli, env: str) -> list[dict]:
    path = cli.backup_dir(env) / "worklog.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_db_service_finds_the_labelled_container(cli, compose_db, names):
    cli.write_env("prod", DB_SERVICE=names["db"], COMPOSE_PROJECT=names["project"],
                  DB_NAME="app", DB_PASSWORD=PASSWORD)
    done = cli("backup", "--env=prod")
    assert done.returncode == 0, done.stderr
    manifest = json.loads(open(last_line(done.stdout) + ".json").read())
    assert manifest["container"] == compose_db.name
    lines = worklog(cli, "prod")
    assert len(lines) == 1 and lines[0]["container"] == compose_db.name  # resolving logs nothing
    # without COMPOSE_PROJECT, a service name found in one project only is enough
    cli.write_env("prod", DB_SERVICE=names["db"], DB_NAME="app", DB_PASSWORD=PASSWORD)
    assert cli("backup", "--env=prod").returncode == 0


def test_two_running_matches_are_refused_listing_them(cli, compose_db, names, docker_engine, extra):
    second = f"pgrunbook-check13-{names['project']}-db-2"
    extra.append(sleeper(docker_engine, second, compose_labels(names["project"], names["db"], 2)))
    cli.write_env("prod", DB_SERVICE=names["db"], COMPOSE_PROJECT=names["project"],
                  DB_NAME="app", DB_PASSWORD=PASSWORD)
    done = cli("backup", "--env=prod")
    assert done.returncode == 2
    assert compose_db.name in done.stderr and second in done.stderr and "#2" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not list(cli.backup_dir("prod").glob("*.dump")) if cli.backup_dir("prod").exists() else True


def test_same_service_in_two_projects_asks_for_compose_project(cli, compose_db, names,
                                                               docker_engine, extra):
    other = f"pgrunbook-check13-{names['other']}-db-1"
    extra.append(sleeper(docker_engine, other, compose_labels(names["other"], names["db"])))
    cli.write_env("prod", DB_SERVICE=names["db"], DB_NAME="app", DB_PASSWORD=PASSWORD)
    done = cli("backup", "--env=prod")
    assert done.returncode == 2
    assert "COMPOSE_PROJECT" in done.stderr and names["other"] in done.stderr, done.stderr
    cli.write_env("prod", DB_SERVICE=names["db"], COMPOSE_PROJECT=names["project"],
                  DB_NAME="app", DB_PASSWORD=PASSWORD)
    assert cli("backup", "--env=prod").returncode == 0


def test_stopped_or_missing_service_says_what_to_do(cli, names, docker_engine, extra):
    stopped = f"pgrunbook-check13-{names['other']}-cache-1"
    extra.append(sleeper(docker_engine, stopped, compose_labels(names["other"], "cache" + names["tag"]),
                         start=False))
    cli.write_env("prod", DB_SERVICE="cache" + names["tag"], DB_NAME="app", DB_PASSWORD=PASSWORD)
    done = cli("backup", "--env=prod")
    assert done.returncode == 1
    assert "稼働していません" in done.stderr and f"docker compose -p {names['other']} up -d" in done.stderr

    notified = cli.home / "notified.json"
    cli.write_env("prod", DB_SERVICE="nothing" + names["tag"], DB_NAME="app", DB_PASSWORD=PASSWORD,
                  NOTIFY_COMMAND=f"tee {notified}")
    done = cli("backup", "--env=prod")
    assert done.returncode == 2
    assert "見つかりません" in done.stderr and "docker compose ps" in done.stderr
    # logged (and so notified) like any failed backup: cron's webhook hears of a DB that is down
    last = worklog(cli, "prod")[-1]
    assert last["task"] == "backup" and last["result"] == "failed" and "見つかりません" in last["error"]
    assert last["container"] == f"DB_SERVICE=nothing{names['tag']}"
    message = json.loads(notified.read_text())
    assert message["task"] == "backup" and message["result"] == "failed"
    # a dry run needs no engine: it prints the hand commands that find the container by label
    dry = cli("backup", "--env=prod", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"docker ps -q --filter label=com.docker.compose.service=nothing{names['tag']}" in dry.stdout


def test_db_container_and_db_service_together_are_a_settings_error(cli, names):
    cli.write_env("prod", DB_CONTAINER="knot-db", DB_SERVICE=names["db"], DB_NAME="app")
    done = cli("backup", "--env=prod")
    assert done.returncode == 2 and "片方だけ" in done.stderr


def test_a_service_and_a_name_of_one_container_are_one_database(cli, compose_db, names):
    cli.write_env("prod", DB_CONTAINER=compose_db.name, DB_NAME="app", DB_PASSWORD=PASSWORD)
    cli.write_env("dev", DB_SERVICE=names["db"], COMPOSE_PROJECT=names["project"], DB_NAME="app",
                  DB_PASSWORD=PASSWORD)
    done = cli("backup", "--env=dev")
    assert done.returncode == 2 and "同じ DB" in done.stderr, done.stderr
    # prod keeps working when dev points elsewhere on the same server
    cli.write_env("dev", DB_SERVICE=names["db"], COMPOSE_PROJECT=names["project"],
                  DB_NAME="app_dev", DB_PASSWORD=PASSWORD)
    assert cli("backup", "--env=prod").returncode == 0


def test_app_services_are_stopped_and_started_around_the_swap(cli, compose_db, names,
                                                              docker_engine, extra):
    apps = [sleeper(docker_engine, f"pgrunbook-check13-{names['project']}-{names['app']}-{n}",
                    compose_labels(names["project"], names["app"], n)) for n in (1, 2)]
    extra.extend(apps)
    started = {}
    for app in apps:
        app.reload()
        started[app.name] = app.attrs["State"]["StartedAt"]
    cli.write_env("dev", DB_SERVICE=names["db"], COMPOSE_PROJECT=names["project"],
                  DB_NAME="app", DB_PASSWORD=PASSWORD, APP_SERVICES=names["app"])
    cli.write_env("prod", DB_CONTAINER="pgrunbook-check13-elsewhere", DB_NAME="app")
    made = cli("backup", "--env=dev")
    assert made.returncode == 0, made.stderr
    done = cli("restore-replace", "--env=dev", f"--file={last_line(made.stdout)}", "--confirm=dev",
               env={"PGRUNBOOK_VERBOSE": "1"})
    assert done.returncode == 0, done.stderr
    for app in apps:
        assert f"{app.name} を停止" in done.stderr and f"{app.name} を再開" in done.stderr
        app.reload()
        assert app.status == "running"
        assert app.attrs["State"]["StartedAt"] != started[app.name]  # really stopped and started
    previous = last_line(done.stdout)
    assert cli("restore-drop", "--env=dev", f"--db={previous}", "--confirm=dev").returncode == 0


def test_missing_app_service_refuses_before_anything(cli, compose_db, names):
    cli.write_env("dev", DB_SERVICE=names["db"], COMPOSE_PROJECT=names["project"],
                  DB_NAME="app", DB_PASSWORD=PASSWORD, APP_SERVICES="web" + names["tag"])
    cli.write_env("prod", DB_CONTAINER="pgrunbook-check13-elsewhere", DB_NAME="app")
    before = compose_db.psql("SELECT count(*) FROM pg_database", "postgres")
    done = cli("restore-replace", "--env=dev", "--file=x.dump", "--confirm=dev")
    assert done.returncode == 2 and "APP_SERVICES" in done.stderr, done.stderr
    assert compose_db.psql("SELECT count(*) FROM pg_database", "postgres") == before
