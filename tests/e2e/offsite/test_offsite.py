"""Offsite copies against a real S3-compatible server (moto) on 127.0.0.1.

The server checks signatures (IAM auth on): a wrong secret really fails.
Credentials reach only the CLI subprocesses, through their environment.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from helpers import Cli, at_offset, backup_like_files, last_line
from helpers.offsite import BUCKET, OffsiteCli, make_keys, offsite_env
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import load_settings


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    made = make_keys(folder)
    again = Cli(folder)("offsite-keygen", f"--out={made.private}")
    assert again.returncode == 1 and "上書き" in again.stderr  # never over a key
    assert made.private.stat().st_mode & 0o777 == 0o600
    assert made.public.startswith("age1") and made.public in made.private.read_text()
    return made


@pytest.fixture(scope="module")
def site(tmp_path_factory, pg, s3, keys):
    """A server with one verified prod backup, pushed offsite once."""
    runner = OffsiteCli(tmp_path_factory.mktemp("server"), s3, pg.name)
    offsite_env(runner, s3, keys, "prod")
    offsite_env(runner, s3, keys, "dev")
    made = runner("backup", "--env=prod")
    assert made.returncode == 0, made.stderr
    checked = runner("verify", "--env=prod")
    assert checked.returncode == 0, checked.stderr
    runner.backup_path = Path(last_line(made.stdout))
    pushed = runner("offsite-push", "--env=prod")
    assert pushed.returncode == 0, pushed.stderr
    runner.pushed = pushed
    return runner


@pytest.fixture
def new_server(tmp_path, pg, s3, keys):
    """An empty server that knows only the bucket and the public key (and gets the private key)."""
    runner = OffsiteCli(tmp_path, s3, pg.name)
    offsite_env(runner, s3, keys, "prod")
    return runner


def worklog(runner: Cli, env: str = "prod") -> list[dict]:
    path = runner.backup_dir(env) / "worklog.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_push_stores_only_ciphertext_with_the_plaintext_sha256(site, s3):
    name = site.backup_path.name
    key = f"prod/{name}.age"
    assert last_line(site.pushed.stdout) == f"s3://{BUCKET}/{key}"
    objects = s3.objects("prod/")
    assert set(objects) == {key, f"prod/{name}.json.age"}
    sealed = s3.client.get_object(Bucket=BUCKET, Key=key)
    data = sealed["Body"].read()
    assert data.startswith(b"age-encryption.org/v1\n")
    assert b"PGDMP" not in data and site.backup_path.read_bytes()[:4096] not in data
    sha256 = site.backup_path.with_name(name + ".sha256").read_text().split()[0]
    assert sealed["Metadata"]["pgrunbook-sha256"] == sha256
    manifest = s3.client.get_object(Bucket=BUCKET, Key=f"prod/{name}.json.age")["Body"].read()
    assert manifest.startswith(b"age-encryption.org/v1\n")  # the manifest is sealed too
    assert b'"tables"' not in manifest and b'"database"' not in manifest

    lines = [r for r in worklog(site) if r["task"] == "offsite-push"]
    assert lines[-1]["result"] == "ok" and lines[-1]["sha256"] == sha256
    assert lines[-1]["remote"] == f"s3://{BUCKET}/{key}"
    assert s3.secret_key not in (site.backup_dir("prod") / "worklog.jsonl").read_text()

    again = site("offsite-push", "--env=prod")  # idempotent, never overwrites
    assert again.returncode == 0 and "既に" in again.stderr, again.stderr

    newer = site("backup", "--env=prod")  # not verified: the verified one is still what goes
    assert newer.returncode == 0, newer.stderr
    third = site("offsite-push", "--env=prod")
    assert third.returncode == 0 and "既に" in third.stderr, third.stderr
    assert f"{Path(last_line(newer.stdout)).name} は verify に合格していない" in third.stderr
    assert set(s3.objects("prod/")) == {key, f"prod/{name}.json.age"}


def test_list_shows_the_pushed_backup(site):
    result = site("offsite-list", "--env=prod")
    assert result.returncode == 0, result.stderr
    sha256 = site.backup_path.with_name(site.backup_path.name + ".sha256").read_text().split()[0]
    assert site.backup_path.name in result.stdout and sha256[:12] in result.stdout
    assert f"s3://{BUCKET}/prod/: 1 件" in result.stderr
    empty = site("offsite-list", "--env=dev")  # the dev prefix is separate
    assert empty.returncode == 0 and empty.stdout.strip() == ""


def test_pull_on_a_new_server_restores_the_same_bytes(site, new_server, keys):
    result = new_server("offsite-pull", "--env=prod", f"--key={keys.private}")
    assert result.returncode == 0, result.stderr
    pulled = Path(last_line(result.stdout))
    original = site.backup_path
    assert pulled == new_server.backup_dir("prod") / original.name
    assert pulled.read_bytes() == original.read_bytes()
    for suffix in (".sha256", ".json"):
        assert pulled.with_name(pulled.name + suffix).read_bytes() == \
            original.with_name(original.name + suffix).read_bytes()
    assert pulled.stat().st_mode & 0o777 == 0o600
    assert backup_like_files(pulled.parent) == sorted([pulled.name, pulled.name + ".json",
                                                       pulled.name + ".sha256"])
    verified = new_server("verify", "--env=prod")  # the restored set is a usable backup
    assert verified.returncode == 0, verified.stderr
    log = [r for r in worklog(new_server) if r["task"] == "offsite-pull"]
    assert log[-1]["result"] == "ok" and log[-1]["file"] == str(pulled)

    again = new_server("offsite-pull", "--env=prod", f"--key={keys.private}")
    assert again.returncode == 1 and "上書きはしません" in again.stderr
    assert pulled.read_bytes() == original.read_bytes()


def test_pull_with_the_wrong_key_leaves_nothing(site, new_server, keys):
    result = new_server("offsite-pull", "--env=prod", f"--key={keys.wrong}")
    assert result.returncode == 1
    assert "鍵が違います" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert backup_like_files(new_server.backup_dir("prod")) == []
    assert worklog(new_server)[-1]["result"] == "failed"


def test_pull_of_a_corrupted_object_leaves_nothing(site, new_server, keys, s3):
    name = "knot-prod-20200101-000000.dump"
    source = s3.client.get_object(Bucket=BUCKET, Key=f"prod/{site.backup_path.name}.age")
    intact = source["Body"].read()
    data = bytearray(intact)
    data[len(data) // 2] ^= 0x01
    s3.client.put_object(Bucket=BUCKET, Key=f"prod/{name}.age", Body=bytes(data),
                         Metadata=source["Metadata"])
    try:
        result = new_server("offsite-pull", "--env=prod", f"--key={keys.private}", f"--name={name}")
        assert result.returncode == 1, result.stderr
        assert "壊れている" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert backup_like_files(new_server.backup_dir("prod")) == []

        # intact ciphertext, but not what was sent: the plaintext sha256 catches it
        s3.client.put_object(Bucket=BUCKET, Key=f"prod/{name}.age", Body=intact,
                             Metadata={**source["Metadata"], "pgrunbook-sha256": "0" * 64})
        result = new_server("offsite-pull", "--env=prod", f"--key={keys.private}", f"--name={name}")
        assert result.returncode == 1 and "一致しません" in result.stderr, result.stderr
        assert backup_like_files(new_server.backup_dir("prod")) == []
    finally:
        s3.client.delete_object(Bucket=BUCKET, Key=f"prod/{name}.age")


def test_missing_bucket_is_one_clear_line(new_server, keys):
    offsite_env(new_server, new_server.s3, keys, "prod", OFFSITE_BUCKET="pgrunbook-no-such-bucket")
    result = new_server("offsite-pull", "--env=prod", f"--key={keys.private}")
    assert result.returncode == 1
    assert "バケット pgrunbook-no-such-bucket がありません" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert backup_like_files(new_server.backup_dir("prod")) == []
    listing = new_server("offsite-list", "--env=prod")
    assert listing.returncode == 1 and "バケット" in listing.stderr


def test_bad_or_missing_credentials_are_one_clear_line(site, new_server, keys, s3):
    wrong = new_server("offsite-pull", "--env=prod", f"--key={keys.private}",
                       env={"AWS_SECRET_ACCESS_KEY": "not-the-secret-Zq81"})
    assert wrong.returncode == 1
    assert "認証情報が拒否されました" in wrong.stderr and "SignatureDoesNotMatch" in wrong.stderr
    assert "not-the-secret-Zq81" not in wrong.stderr + wrong.stdout
    assert backup_like_files(new_server.backup_dir("prod")) == []

    none = new_server("offsite-list", "--env=prod",
                      env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    assert none.returncode == 1 and "認証情報が見つかりません" in none.stderr, none.stderr

    push = site("offsite-push", "--env=prod", env={"AWS_SECRET_ACCESS_KEY": "not-the-secret-Zq81"})
    assert push.returncode == 1 and "認証情報が拒否されました" in last_line(push.stderr)
    assert [line for line in push.stderr.splitlines() if not line.startswith("警告:")] == \
        [last_line(push.stderr)]


def test_push_refuses_unverified_or_changed_backups(cli, s3, keys):
    runner = OffsiteCli(cli.home, s3, cli_pg_name(cli))
    offsite_env(runner, s3, keys, "prod", OFFSITE_PREFIX=f"refuse-{uuid.uuid4().hex[:6]}/")
    made = runner("backup", "--env=prod")
    assert made.returncode == 0, made.stderr
    path = Path(last_line(made.stdout))
    refused = runner("offsite-push", "--env=prod")
    assert refused.returncode == 1 and "invoke verify --env=prod" in refused.stderr
    assert worklog(runner)[-1]["task"] == "offsite-push" and worklog(runner)[-1]["result"] == "failed"

    assert runner("verify", "--env=prod").returncode == 0
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # changed after verify; the sidecar still matches the record
    path.write_bytes(bytes(data))
    changed = runner("offsite-push", "--env=prod")
    assert changed.returncode == 1 and "verify の後に変わっています" in changed.stderr, changed.stderr
    prefix = load_settings("prod", runner.home).offsite_prefix
    assert s3.objects(prefix) == {}  # the upload was taken back, manifest included


def cli_pg_name(cli: Cli) -> str:
    for line in (cli.home / ".env.prod").read_text().splitlines():
        if line.startswith("DB_CONTAINER="):
            return line.split("=", 1)[1]
    raise AssertionError("no DB_CONTAINER")


def test_prune_remote_keeps_recent_and_the_newest(cli, s3, keys):
    runner = OffsiteCli(cli.home, s3, cli_pg_name(cli))
    prefix = f"prune-{uuid.uuid4().hex[:6]}/"
    offsite_env(runner, s3, keys, "prod", OFFSITE_PREFIX=prefix, OFFSITE_RETENTION_DAYS="30")
    old = ["knot-prod-20200101-000000.dump", "knot-prod-20200201-000000.dump"]
    for name in old:
        s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}{name}.age", Body=b"x")
        s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}{name}.json.age", Body=b"x")

    only_old = runner("offsite-prune", "--env=prod")  # everything is old: the newest stays
    assert only_old.returncode == 0, only_old.stderr
    assert set(s3.objects(prefix)) == {f"{prefix}{old[1]}.age", f"{prefix}{old[1]}.json.age"}

    from datetime import datetime

    recent = f"knot-prod-{datetime.now():%Y%m%d-%H%M%S}.dump"
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}{recent}.age", Body=b"x")
    dry = runner("offsite-prune", "--env=prod", "--dry-run")
    assert dry.returncode == 0 and old[1] in dry.stdout and recent not in dry.stdout
    assert len(s3.objects(prefix)) == 3
    wet = runner("prune", "--env=prod")  # the local prune applies the remote retention too
    assert wet.returncode == 0, wet.stderr
    assert set(s3.objects(prefix)) == {f"{prefix}{recent}.age"}
    deletions = [r for r in worklog(runner) if r["task"] == "offsite-delete"]
    assert [r["file"] for r in deletions] == [f"s3://{BUCKET}/{prefix}{name}.age" for name in old]
    assert all(r["result"] == "ok" for r in deletions)


def test_encrypt_and_decrypt_for_physical_media(site, keys, tmp_path):
    original = site.backup_path
    media = tmp_path / "usb"
    media.mkdir()
    shutil.copy(original, media / original.name)
    shutil.copy(original.with_name(original.name + ".sha256"), media)
    sealed = site("encrypt", f"--file={media / original.name}", f"--recipient={keys.public}")
    assert sealed.returncode == 0, sealed.stderr
    sealed_path = Path(last_line(sealed.stdout))
    assert sealed_path == media / (original.name + ".age")
    (media / original.name).unlink()  # only the ciphertext travels

    wrong = site("decrypt", f"--file={sealed_path}", f"--key={keys.wrong}")
    assert wrong.returncode == 1 and "鍵が違います" in wrong.stderr
    assert not (media / original.name).exists() and not list(media.glob("*.partial"))

    opened = site("decrypt", f"--file={sealed_path}", f"--key={keys.private}")
    assert opened.returncode == 0, opened.stderr
    assert (media / original.name).read_bytes() == original.read_bytes()
    again = site("decrypt", f"--file={sealed_path}", f"--key={keys.private}")
    assert again.returncode == 1 and "上書きはしません" in again.stderr

    # into another folder: the .sha256 beside the .age is checked
    restored = tmp_path / "restored"
    restored.mkdir()
    sidecar = media / (original.name + ".sha256")
    sidecar.write_text("0" * 64 + "  " + original.name + "\n")
    mismatch = site("decrypt", f"--file={sealed_path}", f"--key={keys.private}",
                    f"--out={restored / original.name}")
    assert mismatch.returncode == 1 and "一致しません" in mismatch.stderr
    assert list(restored.iterdir()) == []
    shutil.copy(original.with_name(original.name + ".sha256"), sidecar)
    checked = site("decrypt", f"--file={sealed_path}", f"--key={keys.private}",
                   f"--out={restored / original.name}")
    assert checked.returncode == 0, checked.stderr
    assert (restored / original.name).read_bytes() == original.read_bytes()

    by_env = site("encrypt", f"--file={original}", "--env=prod", f"--out={tmp_path / 'x.age'}")
    assert by_env.returncode == 0, by_env.stderr  # recipients from OFFSITE_AGE_RECIPIENTS


def test_settings_refuse_aws_credentials_and_overlapping_prefixes(tmp_path):
    (tmp_path / ".env.prod").write_text("AWS_SECRET_ACCESS_KEY=abc\n")
    with pytest.raises(RunbookError, match="AWS_SECRET_ACCESS_KEY"):
        load_settings("prod", tmp_path)
    (tmp_path / ".env.prod").write_text("OFFSITE_BUCKET=knot-backups\n")
    (tmp_path / ".env.dev").write_text("DB_NAME=app_dev\nOFFSITE_BUCKET=knot-backups\n")
    prod = load_settings("prod", tmp_path)
    assert prod.offsite_prefix == "prod/" and prod.offsite_retention_days == 90
    from pgrunbook.offsite.remote import _check_remote_separation

    _check_remote_separation(prod)  # prod/ and dev/ are apart
    (tmp_path / ".env.dev").write_text("DB_NAME=app_dev\nOFFSITE_BUCKET=knot-backups\nOFFSITE_PREFIX=prod\n")
    with pytest.raises(RunbookError, match="重なっています"):
        _check_remote_separation(prod)
    (tmp_path / ".env.prod").write_text("OFFSITE_AGE_RECIPIENTS=AGE-SECRET-KEY-1ABC\n")
    with pytest.raises(RunbookError, match="公開鍵ではありません"):
        load_settings("prod", tmp_path)


def test_a_failed_encryption_never_commits_a_truncated_object(s3, keys, tmp_path, monkeypatch):
    """The pipe's EOF after a failure must abort the (multipart) upload, not complete it."""
    from pgrunbook.core.console import Console
    from pgrunbook.offsite import remote as offsite
    from pgrunbook.offsite.encryption import parse_recipients

    (tmp_path / ".env.prod").write_text(
        f"OFFSITE_BUCKET={BUCKET}\nOFFSITE_ENDPOINT_URL={s3.url}\nOFFSITE_REGION=us-east-1\n"
        f"OFFSITE_PREFIX=broken-{uuid.uuid4().hex[:6]}/\n")
    settings = load_settings("prod", tmp_path)
    remote = offsite.Remote(settings)
    remote.client = s3.client  # credentials stay out of this process's environment
    source = tmp_path / "knot-prod-20260101-000000.dump"
    source.write_bytes(b"x" * (10 << 20))

    def half_then_fail(plain, target, recipients, on_progress=None):
        target.write(b"age-encryption.org/v1\n" + b"y" * (9 << 20))  # past the multipart threshold
        raise OSError("disk read error")

    monkeypatch.setattr(offsite, "encrypt_stream", half_then_fail)
    key = remote.key_for(source.name)
    with pytest.raises(RunbookError, match="暗号化に失敗しました"):
        remote.upload_encrypted(source, key, parse_recipients([keys.public]), {}, Console())
    assert s3.objects(settings.offsite_prefix) == {}
    uploads = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=settings.offsite_prefix)
    assert uploads.get("Uploads", []) == []

LOCKED_BUCKET = "pgrunbook-offsite-locked"


@pytest.fixture(scope="module")
def locked_bucket(s3):
    s3.client.create_bucket(Bucket=LOCKED_BUCKET, ObjectLockEnabledForBucket=True)
    return LOCKED_BUCKET


def bucket_objects(s3, bucket: str, prefix: str) -> set[str]:
    listing = s3.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for item in listing.get("Contents", [])}


def test_locked_push_cannot_be_deleted_and_prune_skips_it(cli, s3, keys, locked_bucket):
    from datetime import datetime, timedelta, timezone

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

    pinned = runner("pin", "--env=prod", f"--file={name}", "--keep=2y")  # the lock follows the pin
    assert pinned.returncode == 0, pinned.stderr
    until = json.loads((runner.backup_dir("prod") / f"{name}.json").read_text())["keep_until"]
    assert f"オフサイトのロックを {until} まで延ばしました: s3://{locked_bucket}/{prefix}{name}.age" \
        in pinned.stderr
    for key in (f"{prefix}{name}.age", f"{prefix}{name}.json.age"):
        head = s3.client.head_object(Bucket=locked_bucket, Key=key)
        assert head["ObjectLockRetainUntilDate"].astimezone().date().isoformat() == until

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
    left = bucket_objects(s3, locked_bucket, prefix)
    assert f"{prefix}{locked_old}.age" in left and f"{prefix}{plain_old}.age" not in left
    assert f"{prefix}{name}.age" in left


def test_push_with_a_lock_to_a_bucket_without_object_lock_is_one_clear_line(cli, s3, keys):
    runner = OffsiteCli(cli.home, s3, cli_pg_name(cli))
    prefix = f"nolock-{uuid.uuid4().hex[:6]}/"
    offsite_env(runner, s3, keys, "prod", OFFSITE_PREFIX=prefix, OFFSITE_OBJECT_LOCK="compliance")
    assert runner("backup", "--env=prod").returncode == 0
    assert runner("verify", "--env=prod").returncode == 0
    pushed = runner("offsite-push", "--env=prod")
    assert pushed.returncode == 1, pushed.stderr
    assert "オブジェクトロックが有効ではありません" in pushed.stderr and "Traceback" not in pushed.stderr
    assert bucket_objects(s3, BUCKET, prefix) == set()  # nothing half-done


def test_settings_refuse_an_unknown_lock_mode(tmp_path):
    from pgrunbook.core.errors import RunbookError
    from pgrunbook.core.settings import load_settings

    (tmp_path / ".env.prod").write_text("OFFSITE_OBJECT_LOCK=forever\n")
    with pytest.raises(RunbookError, match="OFFSITE_OBJECT_LOCK") as error:
        load_settings("prod", tmp_path)
    assert error.value.exit_code == 2


def test_pinned_offsite_copies_survive_offsite_prune(cli, s3, keys):
    from datetime import datetime, timedelta

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
    assert bucket_objects(s3, BUCKET, prefix) == {f"{prefix}{pinned_by_metadata}.age",
                                           f"{prefix}{pinned_locally}.age", f"{prefix}{recent}.age"}


def test_push_never_takes_a_backup_dated_in_the_future(new_server, s3, keys):
    """Issue 11, defect 6: a backup made under a clock 200 days ahead is not "the newest"."""
    import shutil as shell_tools


    if shell_tools.which("faketime") is None:
        pytest.skip("faketime (Debian package faketime) is not installed")
    offsite_env(new_server, s3, keys, "prod", OFFSITE_PREFIX="clock/")  # a place of its own
    ahead = at_offset(new_server, "+200d", "backup", "--env=prod")
    assert ahead.returncode == 0, ahead.stderr
    future = Path(last_line(ahead.stdout))
    assert new_server("verify", "--env=prod", f"--file={future}").returncode == 0
    made = new_server("backup", "--env=prod")
    assert made.returncode == 0, made.stderr
    just_made = Path(last_line(made.stdout))
    assert new_server("verify", "--env=prod").returncode == 0

    pushed = new_server("offsite-push", "--env=prod")
    assert pushed.returncode == 0, pushed.stderr
    assert last_line(pushed.stdout) == f"s3://{BUCKET}/clock/{just_made.name}.age"
    assert future.name in pushed.stderr and "未来" in pushed.stderr


def moved_behind_a_link(backup: Path, elsewhere: Path, link_name: str | None = None) -> Path:
    """The dump and its sidecars moved elsewhere; only a symlink left in the folder."""
    elsewhere.mkdir(exist_ok=True)
    for path in [backup] + [backup.with_name(backup.name + s) for s in (".sha256", ".json")]:
        path.rename(elsewhere / path.name)
    link = backup.with_name(link_name or backup.name)
    link.symlink_to(elsewhere / backup.name)
    return link


def site_with_a_linked_backup(tmp_path, pg, s3, keys, prefix: str,
                              link_name: str | None = None) -> tuple[OffsiteCli, Path]:
    runner = OffsiteCli(tmp_path / "server", s3, pg.name)
    runner.home.mkdir()
    offsite_env(runner, s3, keys, "prod", OFFSITE_PREFIX=prefix)
    made = runner("backup", "--env=prod")
    assert made.returncode == 0, made.stderr
    link = moved_behind_a_link(Path(last_line(made.stdout)), tmp_path / "big-disk", link_name)
    assert not link.with_name(link.name + ".json").exists()  # the manifest is beside the target
    checked = runner("verify", "--env=prod", f"--file={link}")
    assert checked.returncode == 0, checked.stderr
    return runner, link


def test_push_of_a_symlink_takes_the_manifest_beside_its_target(tmp_path, pg, s3, keys):
    prefix = f"link-{uuid.uuid4().hex[:6]}/"
    site, link = site_with_a_linked_backup(tmp_path, pg, s3, keys, prefix)
    pushed = site("offsite-push", "--env=prod")
    assert pushed.returncode == 0, pushed.stderr
    assert last_line(pushed.stdout) == f"s3://{BUCKET}/{prefix}{link.name}.age"
    assert set(s3.objects(prefix)) == {f"{prefix}{link.name}.age", f"{prefix}{link.name}.json.age"}

    # and it comes back whole on a new server: the archive with its manifest
    other = OffsiteCli(tmp_path / "new", s3, pg.name)
    other.home.mkdir()
    offsite_env(other, s3, keys, "prod", OFFSITE_PREFIX=prefix)
    pulled = other("offsite-pull", "--env=prod", f"--key={keys.private}")
    assert pulled.returncode == 0, pulled.stderr
    copy = Path(last_line(pulled.stdout))
    assert copy.read_bytes() == link.read_bytes()
    assert copy.with_name(copy.name + ".json").read_bytes() == \
        link.resolve().with_name(link.name + ".json").read_bytes()
    listing = other("list", "--env=prod")
    row = next(line for line in listing.stdout.splitlines() if line.startswith(copy.name))
    assert row.split("\t")[5] == "ok", row  # kit-made, checksum and manifest agree


def test_push_of_a_link_renamed_away_from_its_target_is_refused(tmp_path, pg, s3, keys):
    prefix = f"renamed-{uuid.uuid4().hex[:6]}/"
    site, link = site_with_a_linked_backup(tmp_path, pg, s3, keys, prefix,
                                           link_name="knot-prod-20200101-000000.dump")
    assert link.name != link.resolve().name
    refused = site("offsite-push", "--env=prod", f"--file={link}")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = last_line(refused.stderr)
    assert link.resolve().name in message and "リンク" in message, refused.stderr
    assert "Traceback" not in refused.stderr
    assert s3.objects(prefix) == {}  # nothing half-sent
    assert backup_like_files(site.backup_dir("prod")) == [link.name]  # nothing left behind


def test_offsite_copies_dated_in_the_future_are_never_the_newest(tmp_path, pg, s3, keys):
    """Copies pushed from a host whose clock was ahead: offsite-prune must not delete
    the real newest copy because of them (it keeps "the newest" whatever its age), and
    offsite-pull without --name must not take one of them."""
    from datetime import datetime, timedelta

    prefix = f"clock-{uuid.uuid4().hex[:6]}/"
    runner = OffsiteCli(tmp_path / "server", s3, pg.name)
    runner.home.mkdir()
    offsite_env(runner, s3, keys, "prod", OFFSITE_PREFIX=prefix, OFFSITE_RETENTION_DAYS="30")
    old = ["knot-prod-20200101-000000.dump", "knot-prod-20200201-000000.dump"]
    ahead = f"knot-prod-{datetime.now() + timedelta(days=200):%Y%m%d-%H%M%S}.dump"
    for name in old + [ahead]:
        s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}{name}.age", Body=b"x")
        s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}{name}.json.age", Body=b"x")

    pruned = runner("offsite-prune", "--env=prod")
    assert pruned.returncode == 0, pruned.stderr
    assert set(s3.objects(prefix)) == {f"{prefix}{name}{suffix}" for name in (old[1], ahead)
                                       for suffix in (".age", ".json.age")}, pruned.stderr
    assert ahead in pruned.stderr and "時計" in pruned.stderr, pruned.stderr

    pulled = runner("offsite-pull", "--env=prod", f"--key={keys.private}")
    assert pulled.returncode == 1  # the real newest is a stand-in object: but it is the one chosen
    assert old[1] in pulled.stderr and ahead in pulled.stderr, pulled.stderr
    assert backup_like_files(runner.backup_dir("prod")) == []
