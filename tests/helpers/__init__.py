"""Helpers shared by the tests: the real PostgreSQL containers, the real CLI, and the
small checks many tests make. Fixtures live in the conftest.py files; nothing here
is a test, and no test file imports another test file."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pty
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from pgrunbook.store import catalog

# ---- from the former conftest.py -----------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]  # the checkout


IMAGE = os.environ.get("PGRUNBOOK_TEST_IMAGE", "postgres:15")


OFFICIAL_MATRIX = "postgres:13,postgres:15,postgres:17,postgres:18"


def matrix_images() -> list[str]:
    listed = os.environ.get("PGRUNBOOK_TEST_IMAGES") or (
        IMAGE if "PGRUNBOOK_TEST_IMAGE" in os.environ else OFFICIAL_MATRIX)
    images = [image.strip() for image in listed.split(",") if image.strip()]
    return list(dict.fromkeys(images))


MATRIX = matrix_images()


PASSWORD = "Marker-Pw-7f3a91c2e4"
# the reason of a skip that is no missing tool but a test that does not apply here (conftest:
# in CI every other skip fails the run)
NOT_APPLICABLE = "not applicable: "
# the xdist worker (gw0, gw1, ...) in the names of the session's servers: whose container it is
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


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


def process_state(pid: int) -> str:
    """The state letter of a process (R, S, T for stopped, Z...), "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def wait_for(predicate, what: str, limit: float = 60) -> None:
    """Until ``predicate()``: asked at once, then ever less often (20 ms up to 0.2 s). A
    predicate is mostly a psql exec, and the engine spends tens of ms of CPU on each: a
    long wait polled every 50 ms took CPU from the other worker's tests."""
    deadline = time.monotonic() + limit
    pause = 0.02
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(pause)
        pause = min(0.2, pause * 1.5)
    raise AssertionError(f"gave up waiting for {what}")


@contextlib.contextmanager
def app_transaction_holding(pg, database: str, statement: str) -> Iterator[str]:
    """An app's transaction, open for the block, that ran ``statement`` (a write: its row
    lock granted before the block starts), ended when the block ends."""
    holder = pg.run_detached(f"BEGIN; {statement}; SELECT pg_sleep(120); COMMIT;", database)
    wait_for(lambda: pg.psql("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                             f"WHERE a.application_name = '{holder}' AND l.mode = 'RowExclusiveLock' AND l.granted",
                             "postgres").strip() != "0", "the app's open transaction")
    try:
        yield holder
    finally:
        pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{holder}'",
                "postgres")


def kit_processes(server) -> list[str]:
    """The kit's processes still running in the container (the engine lets an exec run on
    after its client died): pg_restore, the swap script, the kit's own psql (-X)."""
    top = server.container.top(ps_args="-eo pid,args")
    commands = [" ".join(process[1:]) for process in top.get("Processes") or []]
    return [command for command in commands
            if "pg_restore" in command or "pgrunbook-swap" in command
            or (command.startswith("psql") and " -X" in command)]


def wait_for_kit_processes_to_end(server, limit: float = 60) -> None:
    """After a kill or an interrupt: until nothing the kit started runs in the container."""
    wait_for(lambda: not kit_processes(server), "the kit's processes in the container to end", limit)


def tar_of(files: dict[str, bytes]) -> bytes:
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
        if stdin is not None:
            from pgrunbook.infra.container import Container

            wrapper = Container(self.client, self.container)
            result = wrapper.exec(argv, environment={"PGPASSWORD": self.password},
                                  stdin=iter([stdin]))
            if check and result.exit_code:
                raise AssertionError(f"{argv} failed: {result.stderr}")
            return result.exit_code, result.stdout, result.stderr.encode()
        exec_id = api.exec_create(self.container.id, argv, environment={"PGPASSWORD": self.password})["Id"]
        out, err = api.exec_start(exec_id, demux=True)
        code = api.exec_inspect(exec_id)["ExitCode"]
        if check and code:
            raise AssertionError(f"{argv} failed ({code}): {(err or b'').decode()}")
        return code, out or b"", err or b""

    def psql(self, sql: str, database: str = "app") -> str:
        _, out, _ = self.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", self.user,
                               "-d", database, "-A", "-t", "-c", sql])
        return out.decode()

    def create_database(self, name: str, sample: bool = False) -> None:
        # one exec (each -c its own transaction, as CREATE DATABASE needs)
        self.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", self.user, "-d", "postgres",
                   "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "-c", f'CREATE DATABASE "{name}"'])
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
        self.client.api.put_archive(self.container.id, directory, tar_of({name: data}))


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
    container.put_archive("/docker-entrypoint-initdb.d", tar_of({"10-scram.sh": SCRAM_EVERYWHERE}))
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


class Servers:
    """One server per image for the whole session, started on first use."""

    def __init__(self, client) -> None:
        self.client = client
        self.started: dict[str, PgContainer] = {}

    def __call__(self, image: str = IMAGE) -> PgContainer:
        if image not in self.started:
            name = f"pgrunbook-test-{WORKER}-{uuid.uuid4().hex[:8]}"
            server = start_postgres(self.client, name, image=image)
            self.started[image] = server
            server.create_database("app", sample=True)
            server.create_database("app_dev", sample=True)
        return self.started[image]

    def close(self) -> None:
        for server in self.started.values():
            server.container.remove(force=True, v=True)


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


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def backup_like_files(directory: Path) -> list[str]:
    """Anything an operator could mistake for a backup, including partial ones."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir()
                  if p.suffix in (".dump", ".sql", ".partial") or ".dump" in p.name or ".sql" in p.name)


# ---- from the former test_backup.py --------------------------------------------------------

FINGERPRINTS_QUERY = r"""
SELECT n.nspname || '.' || c.relname, (xpath('/row/f/text()', query_to_xml(format(
  'SELECT count(*) || '':'' || coalesce(md5(string_agg(t::text, E''\n'' ORDER BY t::text)), '''') AS f '
  'FROM %I.%I AS t', n.nspname, c.relname), false, true, '')))[1]::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""


def table_fingerprints(pg, database: str) -> dict[str, str]:
    """Every table's full content (not just counts), as one md5 per table: one query (the
    per-table SELECTs run inside it through query_to_xml), not one exec per table."""
    result = {}
    for line in pg.psql(FINGERPRINTS_QUERY, database).splitlines():
        if line:
            table, digest = line.split("|", 1)
            result[table] = digest
    return result


# ---- from the former test_clock.py ---------------------------------------------------------


def at_offset(cli, offset: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real CLI with the host's clock moved by ``offset`` (faketime -f '+200d'), or
    started at a moment that then runs on ('@2025-04-01 02:00:00'). ``env``: more
    environment (S3 credentials)."""
    return subprocess.run(
        ["faketime", "-f", offset, sys.executable, "-m", "invoke", "-r", str(ROOT), *args],
        capture_output=True, text=True, cwd=cli.home, timeout=300,
        env={**os.environ, "PGRUNBOOK_HOME": str(cli.home), "PYTHONUNBUFFERED": "1", **(env or {})},
    )


# ---- from the former test_restore.py -------------------------------------------------------


def databases(pg) -> list[str]:
    return pg.psql("SELECT datname FROM pg_database ORDER BY 1", "postgres").split()


def backup(cli, *args) -> Path:
    result = cli("backup", *args)
    assert result.returncode == 0, result.stderr
    return Path(last_line(result.stdout))


def log_lines(cli, env="prod") -> list[dict]:
    return [json.loads(x) for x in (cli.backup_dir(env) / "worklog.jsonl").read_text().splitlines()]


def comment_of(pg, database: str) -> str:
    return pg.psql("SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database "
                   f"WHERE datname = '{database}'", "postgres").strip()


def run_on_a_terminal(cli, args, answers: bytes):
    """Run the CLI with a real pseudo-terminal as stdin and type the answers."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), *args],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cli.home,
        env={**os.environ, "PGRUNBOOK_HOME": str(cli.home)}, text=True,
    )
    os.close(slave)
    os.write(master, answers)
    stdout, stderr = process.communicate(timeout=120)
    os.close(master)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# ---- from the former test_prune.py ---------------------------------------------------------


def make_backup(directory: Path, when: datetime, fmt: str = "custom", *, env: str = "prod",
                manifest_env: str | None = None, manifest_file: str | None = None,
                with_manifest: bool = True, name: str | None = None) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    name = name or catalog.backup_name("knot", env, when, fmt)
    data = (b"PGDMP" if fmt == "custom" else b"--\n-- PostgreSQL database dump\n") + name.encode() * 20
    (directory / name).write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    (directory / f"{name}.sha256").write_text(f"{sha}  {name}\n")
    if with_manifest:
        manifest = {"kind": "pgrunbook-backup", "env": manifest_env or env,
                    "file": manifest_file or name, "format": fmt, "size": len(data), "sha256": sha}
        (directory / f"{name}.json").write_text(json.dumps(manifest))
    return name


def at(day: datetime, hour: int = 3) -> datetime:
    return day.replace(hour=hour, minute=0, second=0, microsecond=0)


# ---- from the former test_recovery.py ------------------------------------------------------


def replace_scenario(cli, pg, database: str, app) -> tuple:
    """prod aimed at ``database`` with ``app`` in APP_CONTAINERS; a backup, then one more
    row: returns the backup and the fingerprints before (old) and after (live) that row."""
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=database, DB_PASSWORD=PASSWORD,
                  APP_CONTAINERS=app.name)
    dump = backup(cli, "--env=prod")
    old = table_fingerprints(pg, database)
    pg.psql("INSERT INTO public.votes (topic, member_id, choice, cast_at) VALUES "
            "('バックアップ後の投票', 1, '賛成', now())", database)
    return dump, old, table_fingerprints(pg, database)


def assert_clean_env(cli, pg, database: str, app, data, why: str = "") -> None:
    """Never neither: the live DB is open and serves one of ``data`` (old or new),
    nothing of the run is left (staging DB, upload, stopped app, journal)."""
    assert allows_connections(pg, database) == "t"
    assert table_fingerprints(pg, database) in data
    assert not [d for d in databases(pg) if d.startswith(database) and "_staging_" in d]
    assert not uploads(pg)
    app.reload()
    assert app.status == "running"
    assert not (cli.backup_dir("prod") / ".restore-in-progress.json").exists(), why


def allows_connections(pg, database: str) -> str:
    return pg.psql(f"SELECT datallowconn FROM pg_database WHERE datname = '{database}'",
                   "postgres").strip()


def uploads(pg) -> list[str]:
    _, listing, _ = pg.exec(["ls", "-A", "/tmp"])
    return [name for name in listing.decode().split() if name.startswith("pgrunbook-")]


# ---- from the former test_restore_trust.py -------------------------------------------------


def role(pg, name: str, options: str = "NOLOGIN") -> str:
    pg.psql(f'DO $$BEGIN CREATE ROLE "{name}" {options}; EXCEPTION WHEN duplicate_object THEN NULL; END$$',
            "postgres")
    return name


def owners(pg, database: str) -> set[str]:
    return set(pg.psql("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
                       database).split())


# ---- a DB_USER with the runbook's minimal rights (not a superuser) -------------------

# the schemas the app made and every table, view and sequence in them (a serial's
# sequence follows its table) become the owner role's
OWNED_BY = """
DO $$DECLARE r record; BEGIN
  FOR r IN SELECT nspname FROM pg_namespace WHERE nspname IN ('accounting', 'audit') LOOP
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', r.nspname, 'OWNER_ROLE');
  END LOOP;
  FOR r IN SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname IN ('public', 'accounting', 'audit') AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid
                             AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) LOOP
    EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', r.nspname, r.relname, 'OWNER_ROLE');
  END LOOP;
END$$
"""


def minimal_rights(cli, pg, database: str, **extra: str) -> tuple[str, str]:
    """``owner`` owns the database and every table, view and sequence; ``kit`` has
    CREATEDB, is a member of ``owner`` and holds pg_signal_backend. prod runs as kit."""
    suffix = uuid.uuid4().hex[:6]
    owner = role(pg, f"appowner_{suffix}")
    kit = role(pg, f"kit_{suffix}", f"LOGIN CREATEDB PASSWORD '{PASSWORD}'")
    pg.psql(f'GRANT "{owner}" TO "{kit}"', "postgres")
    pg.psql(f'GRANT pg_signal_backend TO "{kit}"', "postgres")
    pg.psql(f'ALTER DATABASE "{database}" OWNER TO "{owner}"', "postgres")
    pg.psql(OWNED_BY.replace("OWNER_ROLE", owner), database)
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=database, DB_USER=kit, DB_PASSWORD=PASSWORD, **extra)
    return owner, kit



# ---- a run held at a stage (faults.pause_point) -----------------------------------------


class Paused:
    """The real CLI started in the background and held at ``stage`` until ``go()``:
    the test sets up what the next step meets and waits on conditions, not on time."""

    def __init__(self, cli, stage: str, folder: Path, *args: str) -> None:
        self.base = folder / f"pause-{uuid.uuid4().hex[:6]}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "invoke", "-r", str(ROOT), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cli.home,
            env={**os.environ, "PGRUNBOOK_HOME": str(cli.home), "PGRUNBOOK_TEST_PAUSE_AT": stage,
                 "PGRUNBOOK_TEST_PAUSE_FILE": str(self.base)})

    def reached(self, what: str, limit: float = 180) -> None:
        wait_for(lambda: Path(f"{self.base}.reached").exists() or self.process.poll() is not None, what, limit)
        assert self.process.poll() is None, self.process.communicate()

    def go(self, timeout: float = 300) -> subprocess.CompletedProcess:
        Path(f"{self.base}.go").touch()
        stdout, stderr = self.process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, stdout, stderr)

    def stop(self) -> None:
        if self.process.poll() is None:  # by its own pid: only the run this test started
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def paused(cli, stage: str, folder: Path, *args: str) -> Iterator[Paused]:
    run = Paused(cli, stage, folder, *args)
    try:
        yield run
    finally:
        run.stop()


# ---- from the former test_prestage.py ------------------------------------------------------

VERBOSE = {"PGRUNBOOK_VERBOSE": "1"}  # the steps too (silent under cron)


def prestaged(pg, database: str) -> list[str]:
    return [d for d in databases(pg) if d.startswith(database) and "_prestaged_" in d]


def restore_test(cli, *args: str):
    result = cli("verify", "--env=prod", "--restore-test", *args, env=VERBOSE)
    assert result.returncode == 0, result.stderr
    return result


def add_vote(pg, database: str) -> None:
    pg.psql("INSERT INTO public.votes (topic, member_id, choice, cast_at) VALUES "
            f"('バックアップ後の投票 {uuid.uuid4().hex[:8]}', 1, '賛成', now())", database)


DATA = "/var/lib/postgresql/data"


@contextlib.contextmanager
def small_disk(cli, docker_engine, tag: str) -> Iterator:
    """A server whose data directory is a 184 MiB tmpfs holding "big" (about 43 MiB), with
    prod aimed at it and RESTORE_PRESTAGE on: live + one prestaged copy nearly fill it."""
    name = f"pgrunbook-test-{tag}-{uuid.uuid4().hex[:6]}"
    server = start_postgres(docker_engine, name, environment={"PGDATA": DATA}, tmpfs={DATA: "size=184m"},
                            command=["postgres", "-c", "max_wal_size=32MB", "-c", "min_wal_size=32MB"])
    try:
        server.create_database("big", sample=True)
        server.psql("CREATE TABLE filler AS SELECT g AS id, repeat(md5(g::text), 16) AS payload "
                    "FROM generate_series(1, 60000) AS g; CHECKPOINT", "big")
        cli.write_env("prod", DB_CONTAINER=name, DB_NAME="big", DB_PASSWORD=PASSWORD, RESTORE_PRESTAGE="true")
        yield server
    finally:
        server.container.remove(force=True, v=True)


# ---- from the former test_cron_daemon.py ---------------------------------------------------

WAIT_SECONDS = 130


CRON_PIDFILE = Path("/run/crond.pid")


def cron_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root (cron runs root's crontab)"
    if not shutil.which("cron") or not shutil.which("crontab"):
        return "needs Debian's cron daemon: apt-get install cron (.ci/run installs it when missing)"
    return None


def running_cron() -> int | None:
    """The PID of a cron daemon already running (not ours: it is left alone)."""
    try:
        pid = int(CRON_PIDFILE.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "cron" else None


def jobs_of(env: str) -> list[int]:
    """Processes whose command line names this test's env (cron's jobs still running)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"--env={env}".encode() in cmdline:
            found.append(int(entry.name))
    return found




# ---- Prometheus text, as the monitoring tests read it ------------------------------


def samples(text: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        assert family.documentation, family.name
        for sample in family.samples:
            assert set(sample.labels) == {"env"}, sample
            found[(sample.name, sample.labels["env"])] = sample.value
    return found


# ---- the crontab's PITR jobs, as the schedule tests read them ---------------------------

PITR_SCHEDULE = {  # pgBackRest's user guide: full weekly, differential on the other days
    "30 0 * * 0": "pitr-backup --env=prod --type=full",
    "30 0 * * 1-6": "pitr-backup --env=prod --type=diff",
    "*/5 * * * *": "pitr-status --env=prod --backup-max-age=26h",
    "0 3 1 * *": "pitr-drill --env=prod",
}


def cron_jobs(lines: list[str]) -> list[str]:
    return [line for line in lines if line[:1].isdigit() or line.startswith("*")]


# ---- the lost-output seam (infra/container.py), as the tests aim it -------------------


@dataclass
class LostOutputs:
    """The engine's lost outputs, played by the seam in Container.exec. ``env(...)`` is
    for the CLI (cli(..., env=...)) or monkeypatch.setenv; ``dropped()`` tells which
    execs lost their output (one line each: pid, number, kind, command line)."""

    log: Path

    def env(self, rate: float | None = None, match: str | None = None, nth: str | None = None,
            kind: str | None = None, seed: int | None = None) -> dict[str, str]:
        values = {"PGRUNBOOK_TEST_DROP_OUTPUT": None if rate is None else str(rate),
                  "PGRUNBOOK_TEST_DROP_MATCH": match, "PGRUNBOOK_TEST_DROP_NTH": nth,
                  "PGRUNBOOK_TEST_DROP_KIND": kind,
                  "PGRUNBOOK_TEST_DROP_SEED": None if seed is None else str(seed),
                  "PGRUNBOOK_TEST_DROP_LOG": str(self.log)}
        return {name: value for name, value in values.items() if value is not None}

    def dropped(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)


def one_clean_line(result) -> str:
    """A refusal as the operator sees it: a nonzero exit, no traceback, one Japanese line."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr.replace("エラー:", ""), \
        result.stderr
    line = last_line(result.stderr)
    assert line.startswith("エラー: "), result.stderr
    return line
