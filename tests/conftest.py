"""Fixtures: a real Docker Engine, a real PostgreSQL container, the real CLI.

The image comes from PGRUNBOOK_TEST_IMAGE (default: the official postgres:15;
CI builds kit-postgres:15 from Debian's packages). Containers have no network
(network_mode="none"): everything goes through the Engine API.

The version matrix: tests marked ``matrix`` run once per image of
PGRUNBOOK_TEST_IMAGES (comma-separated; default: PGRUNBOOK_TEST_IMAGE alone
when that is set, else the official postgres:13,15,17,18). Their ``pg`` is a
server of that image; every other test runs on PGRUNBOOK_TEST_IMAGE only.
One server per image for the whole session (per xdist worker), started when first needed.

Layout: tests/unit/<area>/ are pure (no engine); tests/e2e/<area>/ drive the real
CLI against a real engine and get the ``docker`` marker here, once (e2e/site
builds the site and opens it in a browser: no engine). Tests that share the
host's cron daemon and root's crontab run in one xdist group.

No test may skip in CI: .ci/run installs every tool the tests use and sets
PGRUNBOOK_TEST_STRICT=1, and then any skip fails the run, with its reason. A
skip that is not a missing tool but a test that does not apply (one PostgreSQL
major only, say) says so: its reason starts with helpers.NOT_APPLICABLE.

The container enforces passwords on local connections too (scram-sha-256),
so a wrong DB_PASSWORD really fails and the password really travels.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from helpers import (
    APP_COMMAND,
    IMAGE,
    MATRIX,
    NOT_APPLICABLE,
    PASSWORD,
    Cli,
    LostOutputs,
    Servers,
    cron_available,
    databases,
    docker_client,
    running_cron,
    wait_for,
)


@pytest.fixture(scope="session")
def docker_engine():
    return docker_client()


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


@pytest.fixture
def cli(tmp_path, pg) -> Cli:
    """A checkout-like folder with .env.prod and .env.dev aimed at the test container."""
    runner = Cli(tmp_path)
    runner.write_env("prod", DB_CONTAINER=pg.name, DB_NAME="app", DB_PASSWORD=PASSWORD)
    runner.write_env("dev", DB_CONTAINER=pg.name, DB_NAME="app_dev", DB_PASSWORD=PASSWORD)
    return runner


@pytest.fixture
def target(pg, cli):
    """A live database of its own for replace tests, aimed at by .env.prod and .env.dev."""
    name = f"live_{uuid.uuid4().hex[:8]}"
    pg.create_database(name, sample=True)
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=name, DB_PASSWORD=PASSWORD)
    cli.write_env("dev", DB_CONTAINER=pg.name, DB_NAME=name + "_dev", DB_PASSWORD=PASSWORD)
    pg.create_database(name + "_dev", sample=True)
    pg.psql("INSERT INTO public.members (name, email, joined_on) VALUES "
            "('開発 太郎', 'dev-only@example.jp', '2026-01-01')", name + "_dev")
    yield name
    for db in databases(pg):
        if db.startswith(name):
            pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', "postgres")


@pytest.fixture
def app_container(docker_engine):
    """A small app that stops at once on SIGTERM."""
    name = f"pgrunbook-app-{uuid.uuid4().hex[:6]}"
    app = docker_engine.containers.run(
        IMAGE, APP_COMMAND,
        entrypoint=[], name=name, detach=True, network_mode="none", labels={"pgrunbook.test": "1"})
    yield app
    app.remove(force=True)


@pytest.fixture(scope="module")
def s3():
    """moto's S3 on 127.0.0.1 with a versioned bucket (helpers.offsite), one per module."""
    from helpers.offsite import moto_s3

    with moto_s3() as server:
        yield server


@pytest.fixture(scope="module")
def age_keys(tmp_path_factory):
    """A right and a wrong age identity, made by ``invoke offsite-keygen``."""
    from helpers.offsite import make_keys

    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def lost_outputs(tmp_path) -> LostOutputs:
    """The engine losing exec outputs (the seam in infra/container.py): aim it with
    lost_outputs.env(rate=0.1 | match=... nth=... kind=...), see what it dropped."""
    return LostOutputs(tmp_path / "lost-outputs.log")

CRON_LOCK = Path(tempfile.gettempdir()) / "pgrunbook-tests-cron.lock"


@pytest.fixture
def cron_daemon(tmp_path):
    """The host's cron daemon (and root's crontab) for one test at a time, whichever worker
    runs it: an exclusive lock on a file, held for the test's length. ``soon()`` after
    writing the crontab brings the daemon's next minute to about two seconds away."""
    reason = cron_available()
    if reason:
        pytest.skip(reason)
    with open(CRON_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        daemon = CronDaemon(tmp_path)
        try:
            yield daemon
        finally:
            daemon.stop()


class CronDaemon:
    """Debian's cron, started by the test (``cron -f``) unless one already runs (then it is
    used as it is and never stopped)."""

    def __init__(self, tmp_path: Path) -> None:
        self.output = tmp_path / "cron-daemon.out"
        self.process: subprocess.Popen | None = None
        if running_cron() is None:
            self._start({})

    def _start(self, environment: dict[str, str]) -> None:
        with open(self.output, "ab") as output:
            self.process = subprocess.Popen(["cron", "-f"], stdout=output, stderr=subprocess.STDOUT,
                                            env={**os.environ, **environment})
        daemon = self.process
        # running once it has written its PID file (or it ended: said below)
        wait_for(lambda: daemon.poll() is not None or running_cron() == daemon.pid, "cron -f to start", 30)
        if daemon.poll() is not None:
            text = self.output.read_text(errors="replace").strip()
            pytest.skip(f"cron -f did not keep running (exit {daemon.returncode}): {text[-300:]}")

    def soon(self) -> None:
        """cron starts jobs on its minute: the daemon this test started is started again with
        its clock (its only: a job gets cron's own bare environment, and the real time) at
        second 58, so that the jobs just written run in about two seconds, not up to 60."""
        libraries = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
        if self.process is None or not libraries:
            return  # not ours (or no faketime): its next minute comes when it comes
        self.stop()
        offset = (58 - int(time.time()) % 60) % 60
        # the library itself, not the faketime command (which forks: its PID would not be cron's)
        self._start({"LD_PRELOAD": str(libraries[0]), "FAKETIME": f"+{offset}"})

    def stop(self) -> None:
        daemon, self.process = self.process, None
        if daemon is None:
            return
        daemon.terminate()  # by its PID: only the daemon this test started
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)


TESTS = Path(__file__).resolve().parent
NO_ENGINE_AREAS = {"site"}  # e2e/site builds and browses the site: no Docker
# e2e areas by the time their tests take (restore about two thirds of the whole), then the rest
HEAVY_FIRST = ("restore", "infra", "lab", "pitr", "monitoring", "backup", "offsite", "core", "store", "site")


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker more than the CPUs. The e2e tests spend much of their time
    waiting on the engine and the servers (exec round trips, container starts, lock
    timeouts), so a third worker on 2 cores keeps both busy: 690 tests took 16:55 with 3
    workers, all passing; with 2, the 653 tests before them took 17 to 20 minutes."""
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(config, items):
    """The docker marker, set once by place: every e2e test outside e2e/site. Under xdist,
    ``--dist loadscope`` (pyproject.toml) runs a module on one worker, so that its
    module-scoped servers start once and its tests run in their order; the host's cron
    daemon is one test's at a time through the cron_daemon fixture's lock. (Not
    ``loadgroup``: with pytest 9 its groups are silently ignored, as xdist 3.8 renames
    ``item._nodeid``, which pytest 9 no longer reads.)"""
    by_module: dict[Path, list] = {}
    for item in items:
        by_module.setdefault(Path(str(item.path)).resolve(), []).append(item)
    # the heaviest areas first, so that the run does not end on one worker with a long
    # module while the others wait (a module keeps its tests' order)
    rank = {area: index for index, area in enumerate(HEAVY_FIRST)}
    place = {id(item): index for index, item in enumerate(items)}

    def heavy_first(item) -> tuple[int, int]:
        parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
        area = parts[1] if parts[0] == "e2e" and len(parts) > 2 else parts[0]
        return rank.get(area, len(rank)), place[id(item)]

    items.sort(key=heavy_first)
    for path, module_items in by_module.items():
        parts = path.relative_to(TESTS).parts
        if parts[0] != "e2e" or parts[1] in NO_ENGINE_AREAS:
            continue
        for item in module_items:
            item.add_marker(pytest.mark.docker)


STRICT = os.environ.get("PGRUNBOOK_TEST_STRICT") == "1"
_unexplained_skips: list[str] = []


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _note_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not reason.startswith(NOT_APPLICABLE):
            _unexplained_skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report):
    _note_skip(report)


def pytest_collectreport(report):
    _note_skip(report)


def pytest_sessionfinish(session, exitstatus):
    """In CI (PGRUNBOOK_TEST_STRICT=1) a skipped test fails the run: what it needed is missing."""
    if STRICT and _unexplained_skips and not os.environ.get("PYTEST_XDIST_WORKER"):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "skipped in CI (PGRUNBOOK_TEST_STRICT=1): install what they need", red=True)
            for line in _unexplained_skips:
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
