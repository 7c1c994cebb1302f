"""Point-in-time recovery with the pgBackRest repository on S3 (HTTPS), through the real CLI.

The storage is moto's S3 on 127.0.0.1, served over TLS with a certificate made
here (the DB containers verify it with repo1-storage-ca-file, as a MinIO of your
own would be configured). Werkzeug closes a TLS connection without close_notify,
which OpenSSL 3 clients (pgBackRest 2.45) call ``TLS error … unexpected eof``;
the server below sends close_notify before closing. The bucket has versioning
and Object Lock (a default governance retention), as runbooks/pitr.md advises.

The DB container is the runbook's own files (examples/pitr: Dockerfile, compose's
``db`` service) with the S3 lines of pgbackrest.conf uncommented, on
network_mode="host" (the only way a container reaches 127.0.0.1), listening on
127.0.0.1 at a free port; the scratch copies get PITR_SCRATCH_NETWORK=host.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import re
import shutil
import socket
import ssl
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from helpers import PASSWORD, SCRAM_EVERYWHERE, Cli, last_line, tar_of, wait_for
from helpers.offsite import s3_user
from helpers.pitr import (
    BASE_IMAGE,
    CIPHER_PASS,
    EXAMPLE,
    STANZA,
    compose_service,
    exec_in,
    interpolate,
    psql,
    remove_with_volumes,
    server_time,
)
from pgrunbook.pitr import scratch as pitr_scratch

RUN = uuid.uuid4().hex[:8]

BUCKET = "knot-db-pitr"

REGION = "ap-northeast-1"

CA_IN_CONTAINER = "/etc/pgbackrest/ca.pem"


def test_the_copy_listens_on_no_tcp_address():
    """On PITR_SCRATCH_NETWORK=host the copy would take the host's port and serve the
    restored data; the kit reaches it through docker exec only."""
    command = ["postgres", "-c", "listen_addresses=*", "-c", "archive_mode=on", "-c", "port=5433"]
    argv = pitr_scratch.scratch_command(command)
    assert argv[-2:] == ["-c", "listen_addresses="]  # the last -c wins
    assert "archive_mode=off" in argv and "port=5433" not in argv


def test_the_hand_commands_for_s3_pass_the_keys_and_listen_nowhere(tmp_path):
    runner = Cli(tmp_path)
    runner.write_env("prod", DB_CONTAINER="no-such-container-pitrs3", PITR_STANZA=STANZA,
                     PITR_SCRATCH_NETWORK="host")
    dry = runner("pitr-restore-scratch", "--env=prod", "--target-time=2026-01-28T01:15:00Z", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "--network host" in dry.stdout and "--network none" not in dry.stdout
    assert "-e PGBACKREST_REPO1_S3_KEY -e PGBACKREST_REPO1_S3_KEY_SECRET" in dry.stdout
    assert "postgres -c archive_mode=off -c listen_addresses=''" in dry.stdout
    runner.write_env("prod", DB_CONTAINER="no-such-container-pitrs3", PITR_STANZA=STANZA)
    dry = runner("pitr-restore-scratch", "--env=prod", "--target-time=2026-01-28T01:15:00Z", "--dry-run")
    assert "PGBACKREST_REPO1_S3_KEY" not in dry.stdout  # a volume repository needs no keys


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1: pgBackRest 2.45 matches the host against DNS names
    only, Python against the IP address, so the SAN has both."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("127.0.0.1"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "ca.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    cert_path.chmod(0o644)  # read by the postgres user in the containers
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class S3:
    def __init__(self, port: int, ca: Path, key: str, secret: str, client) -> None:
        self.port, self.ca, self.key, self.secret, self.client = port, ca, key, secret, client

    def keys(self, prefix: str) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for item in listing.get("Contents", [])]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import boto3
    from moto import settings as moto_settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import ThreadedWSGIServer

    folder = tmp_path_factory.mktemp("s3tls")
    ca, key_file = self_signed(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca, key_file)

    class CleanTLSServer(ThreadedWSGIServer):
        def shutdown_request(self, request):
            with contextlib.suppress(OSError, ValueError):
                request.unwrap()  # close_notify: a bare EOF is an error to OpenSSL 3 clients
            super().shutdown_request(request)

    previous = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    ActionAuthenticatorMixin.request_count = 0
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 3  # the user, its policy, its key; then signed
    server = CleanTLSServer("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app),
                            handler=MotoRequestHandler, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        url = f"https://127.0.0.1:{port}"

        def client(service, key="bootstrap", secret="bootstrap"):
            return boto3.client(service, endpoint_url=url, region_name=REGION, verify=str(ca),
                                aws_access_key_id=key, aws_secret_access_key=secret)

        made = s3_user(client("iam"), "pitr")
        s3_client = client("s3", made["AccessKeyId"], made["SecretAccessKey"])
        s3_client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True,
                                CreateBucketConfiguration={"LocationConstraint": REGION})
        s3_client.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
        yield S3(port, ca, made["AccessKeyId"], made["SecretAccessKey"], s3_client)
    finally:
        with contextlib.suppress(OSError):  # moto's state is the process's: leave none behind
            urllib.request.urlopen(urllib.request.Request(
                f"https://127.0.0.1:{server.server_address[1]}/moto-api/reset", method="POST"),
                context=ssl.create_default_context(cafile=str(ca)), timeout=10).close()
        server.shutdown()
        thread.join(10)
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = previous


def s3_config(s3: S3) -> str:
    """examples/pitr/pgbackrest.conf with its S3 lines in place of the volume's repo1-path,
    the values this storage needs."""
    text = (EXAMPLE / "pgbackrest.conf").read_text(encoding="utf-8")
    values = {"repo1-s3-endpoint": "127.0.0.1", "repo1-s3-region": REGION, "repo1-s3-bucket": BUCKET,
              "repo1-storage-port": str(s3.port), "repo1-storage-ca-file": CA_IN_CONTAINER}
    commented = re.compile(r"^#   (repo1-[a-z0-9-]+)=(\S+)$")
    lines, found = [], set()
    for line in text.splitlines():
        if line == "repo1-path=/var/lib/pgbackrest":
            continue
        match = commented.match(line)
        if match:
            found.add(match.group(1))
            line = f"{match.group(1)}={values.get(match.group(1), match.group(2))}"
        lines.append(line)
    assert set(values) <= found, f"pgbackrest.conf no longer shows {set(values) - found}"
    assert {"repo1-type", "repo1-path", "repo1-s3-uri-style", "repo1-bundle"} <= found
    return "\n".join(lines) + "\n"


def s3_compose_service() -> dict:
    """compose.yaml's db service with its commented S3 key lines in."""
    text = (EXAMPLE / "compose.yaml").read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^(\s+)# (PGBACKREST_REPO1_S3_KEY\w*: )", r"\1\2", text)
    assert count == 2, "compose.yaml no longer shows the S3 keys"
    return yaml.safe_load(text)["services"]["db"]


@pytest.fixture(scope="module")
def s3_image(engine, s3, tmp_path_factory):
    """examples/pitr/Dockerfile with the S3 pgbackrest.conf, built as compose would."""
    context = tmp_path_factory.mktemp("pitrs3-image")
    shutil.copy(EXAMPLE / "Dockerfile", context / "Dockerfile")
    (context / "pgbackrest.conf").write_text(s3_config(s3), encoding="utf-8")
    tag = f"pgrunbook-test-pitrs3-{RUN}:15"
    engine.images.build(path=str(context), tag=tag, buildargs={"POSTGRES_IMAGE": BASE_IMAGE},
                        network_mode="none", rm=True, forcerm=True, labels={"pgrunbook.test": "1"})
    yield tag
    engine.images.remove(tag, force=True)


def start_s3_db(engine, image: str, s3: S3, name: str, secret: str):
    """compose's db service on the host's network: PostgreSQL on 127.0.0.1 at a free port,
    the S3 keys in its environment, the CA mounted where pgbackrest.conf points."""
    from docker.types import Mount

    port = free_port()
    service = s3_compose_service()
    variables = {"POSTGRES_PASSWORD": PASSWORD, "PGBACKREST_REPO1_CIPHER_PASS": CIPHER_PASS,
                 "PGBACKREST_REPO1_S3_KEY": s3.key, "PGBACKREST_REPO1_S3_KEY_SECRET": secret}
    environment = {key: interpolate(str(value), variables) for key, value in service["environment"].items()}
    assert environment["PGBACKREST_REPO1_S3_KEY_SECRET"] == secret
    environment.update(PGPORT=str(port), PGBACKREST_PG1_PORT=str(port))
    command = [*service["command"], "-c", "listen_addresses=127.0.0.1"]
    mounts = [Mount(CA_IN_CONTAINER, str(s3.ca), type="bind", read_only=True)]
    try:
        for spec in service["volumes"]:
            volume, target = spec.split(":", 1)
            engine.volumes.create(f"{name}-{volume}", labels={"pgrunbook.test": "1"})
            mounts.append(Mount(target, f"{name}-{volume}", type="volume"))
        container = engine.containers.create(
            image, command=command, name=name, environment=environment, mounts=mounts,
            network_mode="host", labels={"pgrunbook.test": "1"})
        container.put_archive("/docker-entrypoint-initdb.d", tar_of({"10-scram.sh": SCRAM_EVERYWHERE}))
        container.start()

        def ready() -> bool:
            container.reload()
            assert container.status == "running", container.logs().decode()[-2000:]
            if b"init process complete" not in container.logs():
                return False
            return exec_in(container, ["pg_isready", "-q", "-U", "app"])[0] == 0

        wait_for(ready, f"{name} to start", 120)
        container.reload()
    except BaseException:
        remove_s3_db(engine, name)
        raise
    return container


def remove_s3_db(engine, name: str) -> None:
    """The container and its volumes, by name (whatever of them was made)."""
    from docker.errors import NotFound

    with contextlib.suppress(NotFound):
        engine.containers.get(name).remove(force=True, v=True)
    for spec in compose_service()["volumes"]:
        with contextlib.suppress(NotFound):
            engine.volumes.get(f"{name}-{spec.split(':', 1)[0]}").remove(force=True)


@pytest.fixture(scope="module")
def live(engine, s3, s3_image):
    name = f"pgrunbook-test-pitrs3-{RUN}"
    container = start_s3_db(engine, s3_image, s3, name, s3.secret)
    yield container
    for scratch in engine.containers.list(all=True, filters={"label": f"pgrunbook.pitr-source={name}"}):
        remove_with_volumes(engine, scratch)
    remove_s3_db(engine, name)


@pytest.fixture(scope="module")
def home(tmp_path_factory, live) -> Cli:
    runner = Cli(tmp_path_factory.mktemp("pitrs3"))
    runner.write_env("prod", DB_CONTAINER=live.name, DB_NAME="app", DB_PASSWORD=PASSWORD,
                     PITR_STANZA=STANZA, PITR_SCRATCH_NETWORK="host")
    return runner


def test_archive_backup_and_restore_to_a_time_with_the_repository_on_s3(engine, s3, live, home):
    done = home("pitr-setup", "--env=prod")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PITR の準備ができました" in done.stderr
    done = home("pitr-backup", "--env=prod", "--type=full")
    assert done.returncode == 0, done.stdout + done.stderr
    label = last_line(done.stdout)
    assert re.fullmatch(r"\d{8}-\d{6}F", label), done.stdout
    # it is all in the bucket (encrypted), nothing in the container's repository volume
    assert any(key.startswith(f"knot/backup/{STANZA}/{label}/") for key in s3.keys("knot/backup/"))
    assert any(key.startswith(f"knot/archive/{STANZA}/15-1/") for key in s3.keys("knot/archive/"))
    assert exec_in(live, ["find", "/var/lib/pgbackrest", "-type", "f"])[1].strip() == ""
    status = home("pitr-status", "--env=prod")
    assert status.returncode == 0, status.stdout + status.stderr
    assert last_line(status.stdout).startswith(f"OK env=prod stanza={STANZA}: ")

    psql(live, "CREATE TABLE ledger (id int PRIMARY KEY, note text)")
    psql(live, "INSERT INTO ledger VALUES (1, 'before'), (2, 'before')")
    time.sleep(1)
    target = server_time(live)
    time.sleep(1)
    psql(live, "INSERT INTO ledger VALUES (3, 'after')")
    psql(live, "DELETE FROM ledger WHERE id = 1")

    done = home("pitr-restore-scratch", "--env=prod", f"--target-time={target}")
    assert done.returncode == 0, done.stdout + done.stderr
    name = last_line(done.stdout)
    assert "public.ledger\t2 行" in done.stdout
    scratch = engine.containers.get(name)
    try:
        assert psql(scratch, "SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger") == "1,2"
        assert scratch.attrs["HostConfig"]["NetworkMode"] == "host"
        assert psql(scratch, "SHOW listen_addresses") == ""  # on the host's network: no TCP at all
        assert psql(scratch, "SHOW archive_mode") == "off"
        output = done.stdout + done.stderr
        assert CIPHER_PASS not in output and s3.secret not in output
    finally:
        dropped = home("pitr-scratch-drop", "--env=prod", f"--name={name}")
    assert dropped.returncode == 0, dropped.stderr
    assert psql(live, "SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger") == "2,3"


def test_drill_from_s3_compares_with_the_live_rows(engine, s3, live, home):
    """After the test above (the stanza and a full backup exist)."""
    psql(live, "CREATE TABLE votes (id int PRIMARY KEY)")
    psql(live, "INSERT INTO votes SELECT generate_series(1, 3)")
    time.sleep(10)  # the target: 6 s before the drill starts
    psql(live, "INSERT INTO votes VALUES (4)")

    done = home("pitr-drill", "--env=prod", "--minutes=0.1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "public.votes\t3\t4\t3\tOK" in done.stdout
    assert "訓練 OK" in done.stderr
    assert not engine.containers.list(all=True, filters={"label": f"pgrunbook.pitr-source={live.name}"})
    # Object Lock: the WAL pgBackRest wrote are kept as locked versions
    archived = [key for key in s3.keys("knot/archive/") if re.search(r"/[0-9A-F]{24}-", key)]
    head = s3.client.head_object(Bucket=BUCKET, Key=archived[0])
    assert head["ObjectLockMode"] == "GOVERNANCE"


def test_a_wrong_s3_secret_fails_in_one_line_that_names_the_keys(engine, s3, s3_image, tmp_path):
    wrong = "Wrong-Secret-0c4d2e9a1b"
    name = f"pgrunbook-test-pitrs3-badkey-{RUN}"
    container = start_s3_db(engine, s3_image, s3, name, wrong)
    try:
        runner = Cli(tmp_path)
        runner.write_env("prod", DB_CONTAINER=container.name, DB_PASSWORD=PASSWORD, PITR_STANZA=STANZA,
                         PITR_SCRATCH_NETWORK="host")
        done = runner("pitr-setup", "--env=prod")
        assert done.returncode == 1, done.stdout + done.stderr
        error = done.stderr.strip().splitlines()[-1]
        assert error.startswith("エラー: pgBackRest の "), error
        assert "HTTP request failed with 403 (FORBIDDEN) → S3 のキー" in error, error
        assert "PGBACKREST_REPO1_S3_KEY_SECRET" in error and "Path/Query" not in error, error
        assert wrong not in done.stdout + done.stderr and s3.secret not in done.stdout + done.stderr
    finally:
        remove_s3_db(engine, name)
