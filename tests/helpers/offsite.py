"""Helpers of the offsite tests (and of others that need a bucket): moto's S3 on 127.0.0.1
with signatures checked, age keys made by the real CLI, the CLI with the credentials in
its environment only."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers import PASSWORD, Cli, last_line

BUCKET = "pgrunbook-offsite-test"


@dataclass
class S3:
    url: str
    access_key: str
    secret_key: str
    client: object

    def environment(self, **overrides: str) -> dict[str, str]:
        values = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
            # ignored by the kit: the endpoint comes from the settings only
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        }
        values.update(overrides)
        return values

    def objects(self, prefix: str, bucket: str = BUCKET) -> dict[str, dict]:
        listing = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return {item["Key"]: item for item in listing.get("Contents", [])}


def s3_user(iam, name: str) -> dict[str, str]:
    """A moto IAM user allowed s3:*, and its access key (AccessKeyId, SecretAccessKey)."""
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }))
    return iam.create_access_key(UserName=name)["AccessKey"]


@contextlib.contextmanager
def moto_s3() -> Iterator[S3]:
    """A ThreadedMotoServer on 127.0.0.1 (IAM auth on: a wrong secret really fails) with a
    user allowed s3:* and the versioned bucket BUCKET."""
    import boto3  # the dev extra installs the offsite extra: never skipped
    from moto import settings as moto_settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    previous = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    ActionAuthenticatorMixin.request_count = 0
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 3  # create the user, its policy, its key
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:

        def client(service, key="bootstrap", secret="bootstrap"):
            return boto3.client(service, endpoint_url=url, region_name="us-east-1",
                                aws_access_key_id=key, aws_secret_access_key=secret)

        key = s3_user(client("iam"), "backup")
        s3_client = client("s3", key["AccessKeyId"], key["SecretAccessKey"])
        s3_client.create_bucket(Bucket=BUCKET)
        s3_client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield S3(url, key["AccessKeyId"], key["SecretAccessKey"], s3_client)
    finally:
        # moto keeps its users and buckets in this process: the next module's server starts empty
        with contextlib.suppress(OSError):
            urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"),
                                   timeout=10).close()
        server.stop()
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = previous


@dataclass
class Keys:
    private: Path
    public: str
    wrong: Path


def make_keys(folder: Path) -> Keys:
    """Two age identities made by ``invoke offsite-keygen``: the right one and a wrong one."""
    runner = Cli(folder)
    made = runner("offsite-keygen", f"--out={folder / 'offline-key.txt'}")
    assert made.returncode == 0, made.stderr
    other = runner("offsite-keygen", f"--out={folder / 'wrong-key.txt'}")
    assert other.returncode == 0, other.stderr
    return Keys(folder / "offline-key.txt", last_line(made.stdout), folder / "wrong-key.txt")


class OffsiteCli(Cli):
    """The CLI with the S3 credentials in its environment (only there)."""

    def __init__(self, home: Path, s3: S3, pg_name: str) -> None:
        super().__init__(home)
        self.s3 = s3
        self.pg_name = pg_name

    def __call__(self, *args, env=None, **kwargs):
        return super().__call__(*args, env={**self.s3.environment(), **(env or {})}, **kwargs)


def offsite_env(cli: Cli, s3: S3, keys: Keys, env: str = "prod", **extra: str) -> None:
    values = {"DB_CONTAINER": cli.pg_name, "DB_NAME": "app" if env == "prod" else "app_dev",
              "DB_PASSWORD": PASSWORD, "OFFSITE_BUCKET": BUCKET,
              "OFFSITE_ENDPOINT_URL": s3.url, "OFFSITE_REGION": "us-east-1",
              "OFFSITE_AGE_RECIPIENTS": keys.public}
    values.update(extra)
    cli.write_env(env, **values)
