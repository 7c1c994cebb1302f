"""``offsite-push``: a *verified* backup, encrypted on this host for the env's age
recipients while it streams into a multipart upload (the storage never sees
plaintext); the manifest first, the archive as the commit point; a HEAD after
the upload must show the expected size and metadata.
"""

from __future__ import annotations

import io
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, recorded
from pgrunbook.offsite.encryption import (
    PlaintextHash,
    encrypt_stream,
    parse_recipients,
)
from pgrunbook.offsite.lock import lock_arguments
from pgrunbook.offsite.remote import (
    ARCHIVE_SUFFIX,
    MANIFEST_SUFFIX,
    META_ENV,
    META_KEEP_UNTIL,
    META_SHA256,
    META_SIZE,
    Remote,
    plaintext_metadata,
)
from pgrunbook.store import catalog, pins
from pgrunbook.store.select import verified_backup


@dataclass(frozen=True)
class PushResult:
    path: Path
    url: str
    sha256: str
    size: int
    stored_size: int
    already_there: bool = False


def push_backup(settings: Settings, file: str | None = None,
                console: Console | None = None) -> PushResult:
    """Encrypt a verified backup for the env's recipients and upload it (never overwriting)."""
    console = console or Console(settings.secrets())
    entry = Entry("offsite-push", settings.env, settings.db_name, settings.db_container, file=file)
    with recorded(settings.worklog_path, entry, console.redact):
        path, sha256 = verified_backup(settings, file, console)
        entry.file, entry.sha256 = str(path), sha256
        local_manifest = catalog.read_manifest(path)  # beside the path, else its link's target
        _refuse_a_manifest_of_another_name(settings, path, local_manifest)
        recipients = parse_recipients(settings.offsite_age_recipients)
        remote = Remote(settings)
        key = remote.key_for(path.name)
        entry.details["remote"] = remote.url(key)
        remote.probe()
        size = path.stat().st_size
        existing = remote.head(key)
        if existing is not None:
            entry.details["already_there"] = True
            return _already_there(remote.url(key), path, sha256, size, existing, console)
        metadata = {META_SHA256: sha256, META_SIZE: str(size), META_ENV: settings.env}
        pin = pins.keep_until(local_manifest)
        if pin:
            metadata[META_KEEP_UNTIL] = pin.isoformat()
        lock = lock_arguments(settings, path, local_manifest)
        if lock:
            entry.details.update(object_lock=settings.offsite_object_lock,
                                 retain_until=lock["ObjectLockRetainUntilDate"].isoformat())
        manifest_path = catalog.sidecar(path, ".json")  # a symlink's may sit beside its target
        manifest_key = key[: -len(ARCHIVE_SUFFIX)] + MANIFEST_SUFFIX
        if manifest_path.is_file():
            console.step(f"マニフェストを暗号化してアップロード → {remote.url(manifest_key)}")
            remote.put_small(manifest_key, _encrypt_bytes(manifest_path.read_bytes(), recipients),
                             metadata, lock)
        committed = False
        try:
            console.step(f"暗号化しながらアップロード → {remote.url(key)}")
            digest, stored = remote.upload_encrypted(path, key, recipients, metadata, console, lock)
            _check_uploaded(remote, key, path, sha256, digest, stored)
            committed = True
        finally:
            if not committed:
                _remove_quietly(remote, key, manifest_key if manifest_path.is_file() else None)
        entry.details.update(size=size, stored_size=stored)
    locked = (f"、{settings.offsite_object_lock} ロック {lock['ObjectLockRetainUntilDate']:%Y-%m-%d} まで"
              if lock else "")
    console.summary(f"オフサイトへ送信完了: {remote.url(key)} ({human_size(stored)}、"
                    f"平文 sha256 {sha256[:12]}… を送信後に確認{locked})")
    return PushResult(path, remote.url(key), sha256, size, stored)


def _refuse_a_manifest_of_another_name(settings: Settings, path: Path,
                                       manifest: dict[str, Any] | None) -> None:
    """The copy goes offsite under the path's name; a pull checks that its manifest
    names that very file. A link (or file) renamed away from what its manifest
    says would make a copy that can never come back: refuse before sending anything."""
    recorded = (manifest or {}).get("file")
    if not recorded or recorded == path.name:
        return
    if path.is_symlink():
        target = path.resolve()
        raise RunbookError(
            f"{path.name} はシンボリックリンクで、マニフェストは本体の {recorded} を指しています"
            "（この名前で送ると offsite-pull で取り戻せません。何も送っていません）",
            f"リンクを本体と同じ名前で作り直す（ln -s {target} {path.with_name(recorded)}）→ "
            f"invoke verify --env={settings.env} --file={recorded} → もう一度 offsite-push",
        )
    raise RunbookError(
        f"{path.name} のマニフェストは別のファイル {recorded} を指しています"
        "（名前を変えたファイルは送りません。何も送っていません）",
        f"ファイルとその .sha256・.json を元の名前 {recorded} に戻してから verify と offsite-push",
    )


def _already_there(url: str, path: Path, sha256: str, size: int,
                   head: dict[str, Any], console: Console) -> PushResult:
    """The object at ``url`` (its HEAD ``head``) is this very backup: nothing to send."""
    remote_sha, _ = plaintext_metadata(head)
    if remote_sha != sha256:
        raise RunbookError(
            f"{url} は既にあり、内容が違います（上書きはしません）",
            "オフサイトの同名オブジェクトを offsite-list で確認",
        )
    console.summary(f"オフサイトに既にあります（sha256 一致）: {url}")
    return PushResult(path, url, sha256, size, int(head.get("ContentLength", 0)), True)


def _encrypt_bytes(data: bytes, recipients: list[Any]) -> bytes:
    sealed = io.BytesIO()
    encrypt_stream(io.BytesIO(data), sealed, recipients)
    return sealed.getvalue()


def _check_uploaded(remote: Remote, key: str, path: Path, sha256: str, digest: PlaintextHash,
                    stored: int) -> None:
    if digest.sha256 != sha256:
        raise RunbookError(
            f"{path.name} が verify の後に変わっています（sha256 が記録と不一致）",
            "送信を取り消しました。verify をやり直してから再実行",
        )
    head = remote.head(key)
    remote_sha, remote_size = plaintext_metadata(head or {})
    if head is None or int(head.get("ContentLength", -1)) != stored or remote_sha != sha256 \
            or remote_size != digest.size:
        raise RunbookError(
            f"アップロード後の確認で {remote.url(key)} のサイズかメタデータが一致しません",
            "送信を取り消しました。ストレージの状態を確認して再実行",
        )


def _remove_quietly(remote: Remote, *keys: str | None) -> None:
    for key in keys:
        if key:
            with suppress(RunbookError):
                remote.delete(key)


