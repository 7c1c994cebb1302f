"""Fixtures: a real Docker Engine, a real PostgreSQL container, the real CLI.

The image comes from PGRUNBOOK_TEST_IMAGE (default: the official postgres:15;
CI builds kit-postgres:15 from Debian's packages). Containers have no network
(network_mode="none"): everything goes through the Engine API.

The version matrix: tests marked ``matrix`` run once per image of
PGRUNBOOK_TEST_IMAGES (comma-separated; default: PGRUNBOOK_TEST_IMAGE alone
when that is set, else the official postgres:13,15,17,18). Their ``pg`` is a
server of that image; every other test runs on PGRUNBOOK_TEST_IMAGE only.
One server per image for the whole session, started when first needed.

The container enforces passwords on local connections too (scram-sha-256),
so a wrong DB_PASSWORD really fails and the password really travels.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("PGRUNBOOK_TEST_IMAGE", "postgres:15")
OFFICIAL_MATRIX = "postgres:13,postgres:15,postgres:17,postgres:18"


def matrix_images() -> list[str]:
    listed = os.environ.get("PGRUNBOOK_TEST_IMAGES") or (
        IMAGE if "PGRUNBOOK_TEST_IMAGE" in os.environ else OFFICIAL_MATRIX)
    images = [image.strip() for image in listed.split(",") if image.strip()]
    return list(dict.fromkeys(images))


MATRIX = matrix_images()
PASSWORD = "Marker-Pw-7f3a91c2e4"
# a stand-in app container: stops at once on SIGTERM (a bare `sleep` as PID 1 ignores it,
# and every `docker stop` of the swap would then wait its whole timeout)
APP_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]
SAMPLE_SQL = ROOT / "src" / "pgrunbook" / "data" / "sample.sql"
# PostgreSQL 13 stores passwords as md5 by default, which scram-sha-256 in
# pg_hba.conf does not accept: store them as SCRAM on every version.
SCRAM_EVERYWHERE = b"""psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \\
  -c "ALTER SYSTEM SET password_encryption = 'scram-sha-256'" \\
  -c "SET password_encryption = 'scram-sha-256'" \\
  -c "ALTER ROLE \\"$POSTGRES_USER\\" PASSWORD '$POSTGRES_PASSWORD'" >/dev/null
cat > "$PGDATA/pg_hba.conf" <<'HBA'
local all all scram-sha-256
host all all all scram-sha-256
HBA
"""


def docker_client():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"no Docker Engine: {error}")
    return client


def wait_for(predicate, what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class PgContainer:
    client: object
    container: object
    name: str
    user: str = "app"
    password: str = PASSWORD
    image: str = IMAGE
    version: str = ""  # the server's version, e.g. "17.6"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def exec(self, argv, *, stdin: bytes | None = None, check: bool = True) -> tuple[int, bytes, bytes]:
        api = self.client.api
        exec_id = api.exec_create(self.container.id, argv, stdin=stdin is not None,
                                  environment={"PGPASSWORD": self.password})["Id"]
        if stdin is None:
            out, err = api.exec_start(exec_id, demux=True)
        else:
            from pgrunbook.infra.container import Container

            wrapper = Container(self.client, self.container)
            result = wrapper.exec(argv, environment={"PGPASSWORD": self.password},
                                  stdin=iter([stdin]))
            if check and result.exit_code:
                raise AssertionError(f"{argv} failed: {result.stderr}")
            return result.exit_code, result.stdout, result.stderr.encode()
        code = api.exec_inspect(exec_id)["ExitCode"]
        if check and code:
            raise AssertionError(f"{argv} failed ({code}): {(err or b'').decode()}")
        return code, out or b"", err or b""

    def psql(self, sql: str, database: str = "app") -> str:
        _, out, _ = self.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", self.user,
                               "-d", database, "-A", "-t", "-c", sql])
        return out.decode()

    def create_database(self, name: str, sample: bool = False) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres")
        self.psql(f'CREATE DATABASE "{name}"', "postgres")
        if sample:
            self.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", self.user, "-d", name],
                      stdin=SAMPLE_SQL.read_bytes())

    def run_detached(self, sql: str, database: str = "app", app_name: str = "") -> str:
        """Start a psql session that goes on by itself (a sleeper, a writer, a lock holder)."""
        app_name = app_name or f"pgrunbook-test-{uuid.uuid4().hex[:8]}"
        exec_id = self.client.api.exec_create(
            self.container.id, ["psql", "-U", self.user, "-d", database, "-c", sql],
            environment={"PGPASSWORD": self.password, "PGAPPNAME": app_name},
        )["Id"]
        self.client.api.exec_start(exec_id, detach=True)
        return app_name

    def hold_table_lock(self, table: str, seconds: float, database: str = "app") -> str:
        """Hold an ACCESS EXCLUSIVE lock on a table; return once it is granted."""
        app_name = self.run_detached(
            f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({seconds}); COMMIT;",
            database)
        wait_for(lambda: self.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            f"WHERE a.application_name = '{app_name}' AND l.mode = 'AccessExclusiveLock' "
            "AND l.granted", "postgres").strip() != "0", "the table lock")
        return app_name

    def put(self, data: bytes, path: str) -> None:
        directory, name = path.rsplit("/", 1)
        self.client.api.put_archive(self.container.id, directory, _tar_of({name: data}))


def ensure_image(client, image: str = IMAGE) -> None:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)
    except ImageNotFound:
        client.images.pull(image)  # a laptop with a registry; CI builds the image instead


def start_postgres(client, name: str, password: str = PASSWORD,
                   command: list[str] | None = None,
                   labels: dict[str, str] | None = None, image: str = IMAGE,
                   environment: dict[str, str] | None = None, **create: object) -> PgContainer:
    """A server of ``image``. ``command``: e.g. ["postgres", "-c", "max_prepared_transactions=10"];
    ``environment`` adds to the image's env contract (e.g. PGDATA), ``create`` goes to the
    Engine's container create (e.g. tmpfs)."""
    ensure_image(client, image)
    container = client.containers.create(
        image,
        command=command,
        name=name,
        environment={"POSTGRES_USER": "app", "POSTGRES_PASSWORD": password, "POSTGRES_DB": "app",
                     **(environment or {})},
        network_mode="none",
        labels={"pgrunbook.test": "1", **(labels or {})},
        **create,
    )
    try:
        return _ready(client, container, name, image, password)
    except BaseException:
        container.remove(force=True, v=True)  # never leave a half-started server behind
        raise


def _ready(client, container, name: str, image: str, password: str) -> PgContainer:
    container.put_archive("/docker-entrypoint-initdb.d", _tar_of({"10-scram.sh": SCRAM_EVERYWHERE}))
    container.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        container.reload()
        if container.status != "running":
            raise RuntimeError(container.logs().decode()[-2000:])
        if b"init process complete" in container.logs():
            exec_id = client.api.exec_create(container.id, ["pg_isready", "-q", "-U", "app"])["Id"]
            client.api.exec_start(exec_id)
            code = client.api.exec_inspect(exec_id)["ExitCode"]
            if code == 0:
                server = PgContainer(client, container, name, password=password, image=image)
                server.version = server.psql("SHOW server_version", "postgres").split()[0]
                return server
        time.sleep(0.3)
    raise RuntimeError("PostgreSQL did not become ready: " + container.logs().decode()[-2000:])


@pytest.fixture(scope="session")
def docker_engine():
    return docker_client()


class Servers:
    """One server per image for the whole session, started on first use."""

    def __init__(self, client) -> None:
        self.client = client
        self.started: dict[str, PgContainer] = {}

    def __call__(self, image: str = IMAGE) -> PgContainer:
        if image not in self.started:
            name = f"pgrunbook-test-{uuid.uuid4().hex[:8]}"
            server = start_postgres(self.client, name, image=image)
            self.started[image] = server
            server.create_database("app", sample=True)
            server.create_database("app_dev", sample=True)
        return self.started[image]

    def close(self) -> None:
        for server in self.started.values():
            server.container.remove(force=True, v=True)


@pytest.fixture(scope="session")
def servers(docker_engine):
    found = Servers(docker_engine)
    yield found
    found.close()


def pytest_generate_tests(metafunc):
    """Tests marked ``matrix`` run once per image of PGRUNBOOK_TEST_IMAGES."""
    if metafunc.definition.get_closest_marker("matrix") and "pg" in metafunc.fixturenames:
        # function scope: no reordering of the session's tests, the servers are shared anyway
        metafunc.parametrize("pg", MATRIX, indirect=True, ids=MATRIX, scope="function")


@pytest.fixture(scope="session")
def pg(request, servers):
    """The test's server: the matrix image of a ``matrix`` test, else PGRUNBOOK_TEST_IMAGE."""
    return servers(getattr(request, "param", IMAGE))


@dataclass
class Cli:
    home: Path

    def __call__(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
        environment = dict(os.environ)
        environment.update({"PGRUNBOOK_HOME": str(self.home), "PYTHONUNBUFFERED": "1"})
        environment.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "invoke", "-r", str(ROOT), *args],
            capture_output=True, text=True, env=environment, timeout=timeout,
            input=stdin, cwd=self.home,
        )

    def write_env(self, env: str, **values: str) -> Path:
        path = self.home / f".env.{env}"
        path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
        return path

    def backup_dir(self, env: str) -> Path:
        return self.home / "backups" / env


@pytest.fixture
def cli(tmp_path, pg) -> Cli:
    """A checkout-like folder with .env.prod and .env.dev aimed at the test container."""
    runner = Cli(tmp_path)
    runner.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD)
    runner.write_env("dev", DB_CONTAINER=pg.name, DB_NAME="app_dev", DB_PASSWORD=PASSWORD)
    return runner


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def backup_like_files(directory: Path) -> list[str]:
    """Anything an operator could mistake for a backup, including partial ones."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir()
                  if p.suffix in (".dump", ".sql", ".partial") or ".dump" in p.name or ".sql" in p.name)
