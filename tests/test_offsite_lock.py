"""Offsite copies the backup host cannot delete (S3 Object Lock) and pinned offsite copies,
against the same moto server on 127.0.0.1 as test_offsite.py (its fixtures, imported)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import last_line
from test_offsite import BUCKET, OffsiteCli, cli_pg_name, keys, offsite_env, s3  # noqa: F401

LOCKED_BUCKET = "pgrunbook-offsite-locked"


@pytest.fixture(scope="module")
def locked_bucket(s3):  # noqa: F811 - the fixture imported above
    s3.client.create_bucket(Bucket=LOCKED_BUCKET, ObjectLockEnabledForBucket=True)
    return LOCKED_BUCKET


def objects(s3, bucket: str, prefix: str) -> set[str]:  # noqa: F811
    listing = s3.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for item in listing.get("Contents", [])}


def test_locked_push_cannot_be_deleted_and_prune_skips_it(cli, s3, keys, locked_bucket):  # noqa: F811
    from botocore.exceptions import ClientError

    runner = OffsiteCli(cli.home, s3, cli_pg_name(cli))
    prefix = f"lock-{uuid.uuid4().hex[:6]}/"
    offsite_env(runner, s3, keys, "prod", OFFSITE_BUCKET=locked_bucket, OFFSITE_PREFIX=prefix,
                OFFSITE_OBJECT_LOCK="governance", OFFSITE_RETENTION_DAYS="30")
    made = runner("backup", "--env=prod")
    assert made.returncode == 0, made.stderr
    assert runner("verify", "--env=prod").returncode == 0
    pushed = runner("offsite-push", "--env=prod")
    assert pushed.returncode == 0, pushed.stderr
    assert "governance ロック" in pushed.stderr
    name = Path(last_line(made.stdout)).name
    created = datetime.strptime(name.split("-prod-")[1][:15], "%Y%m%d-%H%M%S").astimezone()
    for key in (f"{prefix}{name}.age", f"{prefix}{name}.json.age"):
        head = s3.client.head_object(Bucket=locked_bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert abs(head["ObjectLockRetainUntilDate"] - (created + timedelta(days=30))) < timedelta(minutes=5)
        with pytest.raises(ClientError) as denied:  # the host's own key cannot destroy the version
            s3.client.delete_object(Bucket=locked_bucket, Key=key, VersionId=head["VersionId"])
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
    line = [r for r in json.loads("[" + ",".join(
        (runner.backup_dir("prod") / "worklog.jsonl").read_text().splitlines()) + "]")
        if r["task"] == "offsite-push"][-1]
    assert line["object_lock"] == "governance" and line["retain_until"]

    # an old locked copy (pushed long ago with a long lock) and an old unlocked one
    locked_old = "knot-prod-20200101-000000.dump"
    plain_old = "knot-prod-20200201-000000.dump"
    until = datetime.now(timezone.utc) + timedelta(days=2)
    s3.client.put_object(Bucket=locked_bucket, Key=f"{prefix}{locked_old}.age", Body=b"x",
                         ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until)
    s3.client.put_object(Bucket=locked_bucket, Key=f"{prefix}{plain_old}.age", Body=b"x")
    pruned = runner("offsite-prune", "--env=prod")
    assert pruned.returncode == 0, pruned.stderr
    assert f"残します: s3://{locked_bucket}/{prefix}{locked_old}.age（オブジェクトロック governance" \
        in pruned.stderr
    left = objects(s3, locked_bucket, prefix)
    assert f"{prefix}{locked_old}.age" in left and f"{prefix}{plain_old}.age" not in left
    assert f"{prefix}{name}.age" in left


def test_push_with_a_lock_to_a_bucket_without_object_lock_is_one_clear_line(cli, s3, keys):  # noqa: F811
    runner = OffsiteCli(cli.home, s3, cli_pg_name(cli))
    prefix = f"nolock-{uuid.uuid4().hex[:6]}/"
    offsite_env(runner, s3, keys, "prod", OFFSITE_PREFIX=prefix, OFFSITE_OBJECT_LOCK="compliance")
    assert runner("backup", "--env=prod").returncode == 0
    assert runner("verify", "--env=prod").returncode == 0
    pushed = runner("offsite-push", "--env=prod")
    assert pushed.returncode == 1, pushed.stderr
    assert "オブジェクトロックが有効ではありません" in pushed.stderr and "Traceback" not in pushed.stderr
    assert objects(s3, BUCKET, prefix) == set()  # nothing half-done


def test_settings_refuse_an_unknown_lock_mode(tmp_path):
    from pgrunbook.errors import RunbookError
    from pgrunbook.settings import load_settings

    (tmp_path / ".env.prod").write_text("OFFSITE_OBJECT_LOCK=forever\n")
    with pytest.raises(RunbookError, match="OFFSITE_OBJECT_LOCK") as error:
        load_settings("prod", tmp_path)
    assert error.value.exit_code == 2


def test_pinned_offsite_copies_survive_offsite_prune(cli, s3, keys):  # noqa: F811
    runner = OffsiteCli(cli.home, s3, cli_pg_name(cli))
    prefix = f"pin-{uuid.uuid4().hex[:6]}/"
    offsite_env(runner, s3, keys, "prod", OFFSITE_PREFIX=prefix, OFFSITE_RETENTION_DAYS="30")
    future = (datetime.now() + timedelta(days=3650)).date().isoformat()
    pinned_by_metadata = "knot-prod-20200101-000000-fy2019-close.dump"
    pinned_locally = "knot-prod-20200102-000000.dump"
    unpinned = "knot-prod-20200103-000000.dump"
    expired_pin = "knot-prod-20200104-000000.dump"
    recent = f"knot-prod-{datetime.now():%Y%m%d-%H%M%S}.dump"
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}{pinned_by_metadata}.age", Body=b"x",
                         Metadata={"pgrunbook-keep-until": future})
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}{expired_pin}.age", Body=b"x",
                         Metadata={"pgrunbook-keep-until": "2021-01-01"})
    for name in (pinned_locally, unpinned, recent):
        s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}{name}.age", Body=b"x")
    folder = runner.backup_dir("prod")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{pinned_locally}.json").write_text(json.dumps({"keep_until": future}))

    pruned = runner("prune", "--env=prod")  # the local prune applies the offsite rules too
    assert pruned.returncode == 0, pruned.stderr
    assert f"固定 {future} まで" in pruned.stderr
    assert objects(s3, BUCKET, prefix) == {f"{prefix}{pinned_by_metadata}.age",
                                           f"{prefix}{pinned_locally}.age", f"{prefix}{recent}.age"}
