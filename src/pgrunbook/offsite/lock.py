"""Object Lock dates: what a pushed copy carries (OFFSITE_OBJECT_LOCK), what protects
an object from ``offsite-prune``, and a pin carried to the copies already offsite.

Each pushed object and its manifest carry a retain-until date (the backup's pin,
else its creation + OFFSITE_RETENTION_DAYS), so the backup host's key cannot
destroy them before that date.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.offsite.remote import ARCHIVE_SUFFIX, MANIFEST_SUFFIX, META_KEEP_UNTIL, Remote, RemoteBackup
from pgrunbook.store import catalog, pins


def retain_until(settings: Settings, path: Path, manifest: dict[str, Any] | None,
                 now: datetime | None = None) -> datetime:
    """When the object lock of a pushed backup ends (aware, UTC): its pin, else its
    creation + OFFSITE_RETENTION_DAYS (when offsite-prune would delete it), and at
    least a day from now."""
    now = now or datetime.now()
    parsed = catalog.parse(path)
    created = parsed.created if parsed else now
    candidates = [created + timedelta(days=settings.offsite_retention_days), now + timedelta(days=1)]
    pin = pins.pinned_until(manifest)
    if pin:
        candidates.append(pin)
    return max(candidates).astimezone(timezone.utc).replace(microsecond=0)


def lock_arguments(settings: Settings, path: Path, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The put/upload arguments of OFFSITE_OBJECT_LOCK, or {} when it is off."""
    if not settings.offsite_object_lock:
        return {}
    return {"ObjectLockMode": settings.offsite_object_lock.upper(),
            "ObjectLockRetainUntilDate": retain_until(settings, path, manifest)}


def extend_lock(settings: Settings, name: str, until: datetime) -> list[str]:
    """Extend the object lock of an offsite copy and its manifest to ``until`` (a pin):
    never shortens, keeps each object's own mode. Returns the URLs extended."""
    remote = Remote(settings)
    target = until.astimezone(timezone.utc).replace(microsecond=0)
    extended = []
    archive = remote.key_for(name)
    for key in (archive, archive[: -len(ARCHIVE_SUFFIX)] + MANIFEST_SUFFIX):
        head = remote.head(key)
        if head is None:
            continue
        current = head.get("ObjectLockRetainUntilDate")
        if current is not None and current >= target:
            continue
        mode = str(head.get("ObjectLockMode") or settings.offsite_object_lock).upper()
        with remote.errors("保持期限の延長", key):
            arguments: dict[str, Any] = {"Bucket": remote.bucket, "Key": key,
                                         "Retention": {"Mode": mode, "RetainUntilDate": target}}
            if head.get("VersionId"):
                arguments["VersionId"] = head["VersionId"]
            remote.client.put_object_retention(**arguments)
        extended.append(remote.url(key))
    return extended


def extend_to_pin(settings: Settings, path: Path, until: date, console: Console) -> None:
    """After ``pin``: a copy already offsite gets its lock extended to the pin, when the
    env uses Object Lock. The local pin stands whatever happens here: a failure is a
    warning with the manual command."""
    if not (settings.offsite_bucket and settings.offsite_object_lock):
        return
    try:
        extended = extend_lock(settings, path.name, datetime.combine(until, time.max))
    except RunbookError as error:
        console.warn(f"オフサイトのロックを延ばせませんでした（{error.message}）。ローカルの固定は済んでいます。"
                     "手で: aws s3api put-object-retention（runbooks/guards.md）")
        return
    for url in extended:
        console.summary(f"オフサイトのロックを {until.isoformat()} まで延ばしました: {url}")


def protection(settings: Settings, remote: Remote, backup: RemoteBackup,
               now: datetime | None = None) -> str | None:
    """Why an old offsite copy must stay (locked, on legal hold, pinned), or None."""
    now_aware = (now or datetime.now()).astimezone()
    head = remote.head(backup.key) or {}
    until = head.get("ObjectLockRetainUntilDate")
    if until is not None and until > now_aware:
        return (f"オブジェクトロック {str(head.get('ObjectLockMode', '')).lower()} "
                f"{until.astimezone():%Y-%m-%d} まで。削除できないので触りません")
    if str(head.get("ObjectLockLegalHoldStatus", "")).upper() == "ON":
        return "リーガルホールド中"
    today = now_aware.date()
    metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    found = [pins.keep_until({"keep_until": metadata.get(META_KEEP_UNTIL)}),
             pins.keep_until(catalog.read_manifest(settings.backup_dir / backup.name))]
    pin = max((p for p in found if p), default=None)
    if pin and pin >= today:
        return f"固定 {pin:%Y-%m-%d} まで"
    return None


