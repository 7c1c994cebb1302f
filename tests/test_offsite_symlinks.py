"""offsite-push of a backup that is a symlink in the backup folder (the set moved to a
bigger disk). As for verify and restore (test_symlinks.py), the sidecars are read
beside the link, else beside its target: the manifest goes offsite with the archive.
A link renamed away from its target's name is refused: its manifest names the
target, so the remote copy could never be pulled back.

Against the moto S3 server of test_offsite.py on 127.0.0.1.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from conftest import backup_like_files, last_line
from test_offsite import (  # noqa: F401 - fixtures
    BUCKET,
    OffsiteCli,
    keys,
    offsite_env,
    s3,
)


def moved_behind_a_link(backup: Path, elsewhere: Path, link_name: str | None = None) -> Path:
    """The dump and its sidecars moved elsewhere; only a symlink left in the folder."""
    elsewhere.mkdir(exist_ok=True)
    for path in [backup] + [backup.with_name(backup.name + s) for s in (".sha256", ".json")]:
        path.rename(elsewhere / path.name)
    link = backup.with_name(link_name or backup.name)
    link.symlink_to(elsewhere / backup.name)
    return link


def site_with_a_linked_backup(tmp_path, pg, s3, keys, prefix: str,  # noqa: F811
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


def test_push_of_a_symlink_takes_the_manifest_beside_its_target(tmp_path, pg, s3, keys):  # noqa: F811
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


def test_push_of_a_link_renamed_away_from_its_target_is_refused(tmp_path, pg, s3, keys):  # noqa: F811
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


def test_offsite_copies_dated_in_the_future_are_never_the_newest(tmp_path, pg, s3, keys):  # noqa: F811
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
