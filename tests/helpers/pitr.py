"""Helpers of the PITR tests: the example set-up of examples/pitr/ built and started
as the docs show it."""

from __future__ import annotations

import json
import os
import re
import uuid

import pytest
import yaml

from helpers import PASSWORD, ROOT, SCRAM_EVERYWHERE, Cli, docker_client, last_line, tar_of, wait_for

EXAMPLE = ROOT / "examples" / "pitr"

BASE_IMAGE = os.environ.get("PGRUNBOOK_PITR_BASE_IMAGE", "kit-postgres:15-pgbackrest")

CIPHER_PASS = "Cipher-Marker-5b7e0c1d"

STANZA = "knot"

RUN = uuid.uuid4().hex[:8]


def compose_service() -> dict:
    return yaml.safe_load((EXAMPLE / "compose.yaml").read_text(encoding="utf-8"))["services"]["db"]


def interpolate(value: str, variables: dict[str, str]) -> str:
    """compose's ${NAME} and ${NAME:?message}."""
    return re.sub(r"\$\{([A-Z0-9_]+)(?::\?[^}]*)?\}", lambda m: variables[m.group(1)], value)


def start_from_compose(engine, image: str, name: str, command: list[str] | None = None):
    """The compose service as a container: its command, environment and volumes."""
    service = compose_service()
    variables = {"POSTGRES_PASSWORD": PASSWORD, "PGBACKREST_REPO1_CIPHER_PASS": CIPHER_PASS}
    environment = {key: interpolate(str(value), variables) for key, value in service["environment"].items()}
    volumes = {}
    for spec in service["volumes"]:
        volume, target = spec.split(":", 1)
        volumes[f"{name}-{volume}"] = {"bind": target, "mode": "rw"}
        engine.volumes.create(f"{name}-{volume}", labels={"pgrunbook.test": "1"})
    container = engine.containers.create(
        image, command=command or service["command"], name=name, environment=environment,
        volumes=volumes, network_mode="none", labels={"pgrunbook.test": "1"},
    )
    container.put_archive("/docker-entrypoint-initdb.d", tar_of({"10-scram.sh": SCRAM_EVERYWHERE}))
    container.start()

    def ready() -> bool:
        container.reload()
        assert container.status == "running", container.logs().decode()[-2000:]
        if b"init process complete" not in container.logs():
            return False
        return exec_in(container, ["pg_isready", "-q", "-U", "app"])[0] == 0

    wait_for(ready, f"{name} to start", 120)
    return container


def exec_in(container, argv: list[str], user: str = "") -> tuple[int, str]:
    api = container.client.api
    exec_id = api.exec_create(container.id, argv, environment={"PGPASSWORD": PASSWORD}, user=user)["Id"]
    output = api.exec_start(exec_id).decode("utf-8", "replace")
    return api.exec_inspect(exec_id)["ExitCode"], output


def psql(container, sql: str, database: str = "app") -> str:
    code, output = exec_in(container, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "app",
                                       "-d", database, "-A", "-t", "-c", sql])
    assert code == 0, output
    return output.strip()


def remove_with_volumes(engine, container) -> None:
    names = [m["Name"] for m in container.attrs.get("Mounts", []) if m.get("Type") == "volume"]
    container.remove(force=True, v=True)
    for volume in names:
        engine.volumes.get(volume).remove(force=True)


def worklog(home: Cli) -> list[dict]:
    path = home.backup_dir("prod") / "worklog.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def server_time(container) -> str:
    return psql(container, "SELECT clock_timestamp()")


# ---- the fixtures of a test module that needs the PITR live server (imported by the
# conftest.py of tests/e2e/pitr/ and tests/e2e/restore/): one server per module ----


@pytest.fixture(scope="module")
def engine():
    client = docker_client()
    from docker.errors import ImageNotFound

    try:
        client.images.get(BASE_IMAGE)
    except ImageNotFound:
        pytest.skip(f"no pgBackRest image {BASE_IMAGE}: build it with EXTRA_PACKAGES=pgbackrest "
                    f"../shared/ci/postgres-image {BASE_IMAGE}")
    return client


@pytest.fixture(scope="module")
def pitr_image(engine):
    """examples/pitr/Dockerfile, built as compose would build it (base: the kit's image)."""
    tag = f"pgrunbook-test-pitr-{RUN}-{uuid.uuid4().hex[:4]}:15"  # one per module
    engine.images.build(path=str(EXAMPLE), tag=tag, buildargs={"POSTGRES_IMAGE": BASE_IMAGE},
                        network_mode="none", rm=True, forcerm=True, labels={"pgrunbook.test": "1"})
    yield tag
    engine.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def live(engine, pitr_image):
    container = start_from_compose(engine, pitr_image, f"pgrunbook-test-pitr-{RUN}-{uuid.uuid4().hex[:4]}")
    container.reload()
    yield container
    for scratch in engine.containers.list(all=True, filters={"label": f"pgrunbook.pitr-source={container.name}"}):
        remove_with_volumes(engine, scratch)
    remove_with_volumes(engine, container)


@pytest.fixture(scope="module")
def home(tmp_path_factory, live) -> Cli:
    runner = Cli(tmp_path_factory.mktemp("pitr"))
    runner.write_env("prod", DB_CONTAINER=live.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                     PITR_STANZA=STANZA)
    return runner


@pytest.fixture(scope="module")
def backed_up(home, live):
    """pitr-setup, then a full base backup: what every restore below starts from."""
    done = home("pitr-setup", "--env=prod")
    assert done.returncode == 0, done.stderr
    assert "PITR の準備ができました" in done.stderr
    done = home("pitr-backup", "--env=prod", "--type=full")
    assert done.returncode == 0, done.stderr
    label = last_line(done.stdout)
    assert re.fullmatch(r"\d{8}-\d{6}F", label), done.stdout
    return label
