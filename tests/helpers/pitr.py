"""Helpers of the PITR tests: the example set-up of examples/pitr/ built and started
as the docs show it."""

from __future__ import annotations

import json
import os
import re
import uuid

import yaml

from helpers import PASSWORD, ROOT, SCRAM_EVERYWHERE, Cli, tar_of, wait_for

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
