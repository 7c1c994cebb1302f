"""The PITR tests' engine and the example set-up they share (one live server per module)."""

from __future__ import annotations

import re

import pytest

from helpers import PASSWORD, Cli, docker_client, last_line
from helpers.pitr import BASE_IMAGE, EXAMPLE, RUN, STANZA, remove_with_volumes, start_from_compose


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
    tag = f"pgrunbook-test-pitr-{RUN}:15"
    engine.images.build(path=str(EXAMPLE), tag=tag, buildargs={"POSTGRES_IMAGE": BASE_IMAGE},
                        network_mode="none", rm=True, forcerm=True, labels={"pgrunbook.test": "1"})
    yield tag
    engine.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def live(engine, pitr_image):
    container = start_from_compose(engine, pitr_image, f"pgrunbook-test-pitr-{RUN}")
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
