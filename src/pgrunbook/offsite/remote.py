"""Offsite copies: age-encrypted backups in S3-compatible object storage (boto3).

A single host's disk is not a backup. ``push`` sends a *verified* backup,
encrypted on this host for the env's age recipients, so the storage never
sees plaintext; ``pull`` downloads, decrypts and checks it back into the
env's backup folder; ``prune_remote`` applies OFFSITE_RETENTION_DAYS.

Objects under ``s3://<OFFSITE_BUCKET>/<OFFSITE_PREFIX>``:

* ``<backup name>.age``       the encrypted archive. Metadata: the plaintext
  sha256 and size (``x-amz-meta-pgrunbook-sha256`` / ``-size``), the env.
* ``<backup name>.json.age``  the encrypted manifest (table names and row
  counts are data too). Uploaded first; the archive is the commit point.

Integrity: the plaintext is hashed while it streams into the encryption; it
must equal the sha256 that ``verify`` recorded, and a HEAD after the upload
must show the expected size and metadata. A pull hashes what it decrypts and
compares it with the metadata and the manifest before the file gets its
final name. age's authenticated encryption rejects any changed byte.

Credentials come only from the usual AWS sources (environment, ~/.aws,
instance roles); the .env files may not hold them. The endpoint comes only
from the settings: AWS_ENDPOINT_URL in a shell is ignored.

Object Lock (issue 12, OFFSITE_OBJECT_LOCK=governance|compliance): each pushed
object and its manifest carry a retain-until date (the backup's pin, else its
creation + OFFSITE_RETENTION_DAYS), so the backup host's key cannot destroy
them before that date; ``prune_remote`` leaves locked and pinned objects alone.

Memory stays flat: the encryption runs in a thread writing into a pipe that
boto3's multipart upload reads part by part; a download streams through the
decryption straight into ``<name>.partial``.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pgrunbook.backup import pin as pinning
from pgrunbook.backup.dump import fsync_directory, write_private
from pgrunbook.backup.verify import resolve_file
from pgrunbook.core import worklog
from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings, sibling_settings
from pgrunbook.core.worklog import Entry, ensure_private_dir, recorded
from pgrunbook.offsite.encryption import (
    Digest,
    decrypt_stream,
    encrypt_stream,
    load_identities,
    parse_recipients,
)
from pgrunbook.store import catalog
from pgrunbook.store.inventory import future_note, inventory, verified_index

ARCHIVE_SUFFIX = ".age"
MANIFEST_SUFFIX = ".json.age"
META_SHA256 = "pgrunbook-sha256"
META_SIZE = "pgrunbook-size"
META_ENV = "pgrunbook-env"
META_KEEP_UNTIL = "pgrunbook-keep-until"
MIB = 1 << 20
MAX_PARTS = 9000  # S3 allows 10,000 parts; keep a margin for the age overhead
CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "InvalidClientTokenId", "AuthorizationHeaderMalformed", "UnrecognizedClientException",
}
DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "Forbidden", "403"}
CREDENTIAL_HINT = (
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY（環境変数）、~/.aws/credentials、"
    "インスタンスロールのいずれかを確認（.env には書かない）"
)


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise RunbookError(
            "オフサイトコピーに必要な boto3 がインストールされていません",
            "pip install -e '.[offsite]'",
        ) from None
    return boto3


@dataclass(frozen=True)
class RemoteBackup:
    key: str
    name: str
    stored_size: int
    last_modified: datetime
    created: datetime
    sha256: str | None = None
    size: int | None = None

    @property
    def manifest_key(self) -> str:
        return self.key[: -len(ARCHIVE_SUFFIX)] + MANIFEST_SUFFIX


@dataclass(frozen=True)
class PushResult:
    path: Path
    url: str
    sha256: str
    size: int
    stored_size: int
    already_there: bool = False


class Remote:
    """One env's place in the bucket, and every S3 call with its error translated."""

    def __init__(self, settings: Settings) -> None:
        if not settings.offsite_bucket:
            raise RunbookError(
                f"環境 {settings.env} に OFFSITE_BUCKET が設定されていません",
                f".env.{settings.env} に OFFSITE_BUCKET などを設定（runbooks/offsite.md）",
                exit_code=2,
            )
        _check_remote_separation(settings)
        self.settings = settings
        self.bucket = settings.offsite_bucket
        self.prefix = settings.offsite_prefix
        boto3 = _boto3()
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=15,
            read_timeout=120,
            ignore_configured_endpoint_urls=True,  # AWS_ENDPOINT_URL in a shell never redirects
            s3={"addressing_style": "path" if settings.offsite_endpoint_url else "auto"},
        )
        with self.errors("S3 クライアントの準備"):
            self.client = boto3.session.Session().client(
                "s3",
                region_name=settings.offsite_region or None,
                endpoint_url=settings.offsite_endpoint_url or None,
                config=config,
            )

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_for(self, name: str) -> str:
        return self.prefix + name + ARCHIVE_SUFFIX

    @contextmanager
    def errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """botocore's exceptions -> one Japanese line with what to do."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        try:
            yield
        except (NoCredentialsError, PartialCredentialsError):
            raise RunbookError(f"{action}: AWS の認証情報が見つかりません", CREDENTIAL_HINT) from None
        except EndpointConnectionError as error:
            endpoint = getattr(error, "kwargs", {}).get("endpoint_url", "")
            raise RunbookError(
                f"{action}: ストレージに接続できません（{endpoint}）",
                "OFFSITE_ENDPOINT_URL / OFFSITE_REGION とネットワークを確認",
            ) from None
        except ClientError as error:
            raise self._client_error(action, error, key) from None
        except BotoCoreError as error:
            raise RunbookError(f"{action} に失敗しました（{type(error).__name__}）",
                               "ネットワークとストレージの状態を確認して再実行") from None

    def _client_error(self, action: str, error: Any, key: str | None) -> RunbookError:
        info = error.response.get("Error", {})
        code = str(info.get("Code", ""))
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and key is None):
            return RunbookError(
                f"{action}: バケット {self.bucket} がありません",
                "OFFSITE_BUCKET / OFFSITE_REGION / OFFSITE_ENDPOINT_URL を確認"
                "（作成手順は runbooks/offsite.md）",
            )
        if code in CREDENTIAL_CODES:
            return RunbookError(f"{action}: 認証情報が拒否されました（{code}）", CREDENTIAL_HINT)
        if code in DENIED_CODES:
            return RunbookError(
                f"{action}: {self.location} へのアクセス権がありません（{code}）",
                "認証情報と、その IAM ポリシー（s3:ListBucket / GetObject / PutObject / "
                "DeleteObject）を確認",
            )
        if code == "InvalidRequest" and "objectlock" in str(info.get("Message", "")).lower().replace(" ", ""):
            return RunbookError(
                f"{action}: バケット {self.bucket} はオブジェクトロックが有効ではありません",
                "オブジェクトロック有効のバケットを作る（runbooks/guards.md）か、"
                "OFFSITE_OBJECT_LOCK を空にする",
            )
        if code in ("NoSuchKey", "404", "NotFound"):
            return RunbookError(f"{action}: {self.url(key or '')} がありません",
                                f"invoke offsite-list --env={self.settings.env} で確認")
        return RunbookError(f"{action} に失敗しました（{code}: {info.get('Message', '')}）",
                            "ストレージの状態を確認して再実行")

    def probe(self) -> None:
        """Fail early and clearly: credentials, bucket, permission to list."""
        with self.errors(f"{self.location} の確認"):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD, or None when it does not exist."""
        from botocore.exceptions import ClientError

        with self.errors("オブジェクトの確認", key):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as error:
                if str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def list(self, detailed: bool = False) -> list[RemoteBackup]:
        """The env's archives, oldest first (by the time in their name)."""
        found = []
        with self.errors(f"{self.location} の一覧"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    backup = self._remote_backup(item)
                    if backup:
                        found.append(backup)
        found.sort(key=lambda b: catalog.order_key(b.name, b.created))
        if detailed:
            found = [self._with_metadata(b) for b in found]
        return found

    def _remote_backup(self, item: dict[str, Any]) -> RemoteBackup | None:
        key = item["Key"]
        name = key[len(self.prefix):]
        if "/" in name or not name.endswith(ARCHIVE_SUFFIX) or name.endswith(MANIFEST_SUFFIX):
            return None
        name = name[: -len(ARCHIVE_SUFFIX)]
        modified = item["LastModified"].astimezone().replace(tzinfo=None)
        parsed = catalog.parse(Path(name))
        return RemoteBackup(key, name, int(item["Size"]), modified,
                            parsed.created if parsed else modified)

    def _with_metadata(self, backup: RemoteBackup) -> RemoteBackup:
        head = self.head(backup.key) or {}
        sha256, size = _plaintext_metadata(head)
        return RemoteBackup(backup.key, backup.name, backup.stored_size, backup.last_modified,
                            backup.created, sha256, size)

    def find(self, name: str | None) -> RemoteBackup:
        backups = self.list()
        if not backups:
            raise RunbookError(f"{self.location} にオフサイトコピーがありません",
                               f"invoke offsite-push --env={self.settings.env} で作成")
        if not name:
            ahead = dated_ahead(backups)
            real = [b for b in backups if b not in ahead]
            if not real:
                raise RunbookError(
                    f"{self.location} のオフサイトコピーはどれも日時が未来です（{backups[-1].name} など）",
                    "ホストの時計を確認（timedatectl）し、中身を確かめたうえで --name=<名前> で指定する")
            return real[-1]
        wanted = Path(name).name
        wanted = wanted[: -len(ARCHIVE_SUFFIX)] if wanted.endswith(ARCHIVE_SUFFIX) else wanted
        for backup in backups:
            if backup.name == wanted:
                return backup
        raise RunbookError(f"{self.location} に {wanted} がありません",
                           f"invoke offsite-list --env={self.settings.env} で名前を確認")

    def put_small(self, key: str, data: bytes, metadata: dict[str, str],
                  extra: dict[str, Any] | None = None) -> None:
        with self.errors("マニフェストのアップロード", key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata,
                                   ContentType="application/octet-stream", **(extra or {}))

    def get_small(self, key: str) -> bytes | None:
        if self.head(key) is None:
            return None
        with self.errors("マニフェストのダウンロード", key):
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def open_body(self, key: str) -> Any:
        with self.errors("ダウンロード", key):
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]

    def delete(self, key: str) -> None:
        with self.errors("削除", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def upload_encrypted(self, path: Path, key: str, recipients: list[Any],
                         metadata: dict[str, str], console: Console,
                         extra: dict[str, Any] | None = None) -> tuple[Digest, int]:
        """Encrypt ``path`` in a thread into a pipe that the multipart upload reads."""
        read_fd, write_fd = os.pipe()
        sealed_out = os.fdopen(write_fd, "wb")
        sealed_in = os.fdopen(read_fd, "rb")
        outcome: dict[str, Any] = {}
        progress = _progress(console, "暗号化・アップロード")

        def encrypt() -> None:
            try:
                with open(path, "rb") as plain:
                    outcome["digest"] = encrypt_stream(plain, sealed_out, recipients, progress)
            except BaseException as error:  # noqa: BLE001 - handed to the reading side
                outcome["error"] = error
            finally:
                with suppress(OSError):
                    sealed_out.close()

        worker = threading.Thread(target=encrypt, name="age-encrypt", daemon=True)
        stream = _SealedStream(sealed_in, worker, outcome)
        worker.start()
        try:
            with self.errors("アップロード", key):
                self.client.upload_fileobj(
                    stream, self.bucket, key,
                    ExtraArgs={"Metadata": metadata, "ContentType": "application/octet-stream",
                               **(extra or {})},
                    Config=_transfer_config(path.stat().st_size),
                )
        finally:
            sealed_in.close()  # unblocks the encryption if the upload stopped early
            worker.join()
            console.clear_progress()
        if "error" in outcome:
            raise _encryption_failure(outcome["error"])
        return outcome["digest"], stream.size


class _SealedStream(io.RawIOBase):
    """The pipe's reading end: counts bytes; at EOF, fails if the encryption failed.

    A failed encryption must never look like the end of a complete object, or
    the upload would commit a truncated archive.
    """

    def __init__(self, source: Any, worker: threading.Thread, outcome: dict[str, Any]) -> None:
        self.source = source
        self.worker = worker
        self.outcome = outcome
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = self.source.read(size)
        if not data:
            self.worker.join()
            if "error" in self.outcome or "digest" not in self.outcome:
                raise _encryption_failure(self.outcome.get("error"))
        self.size += len(data)
        return data

    def readinto(self, target) -> int:  # type: ignore[override]
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)


class _BodyReader(io.RawIOBase):
    """A download body for the decryption; remembers a network failure."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.failure: Exception | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[override]
        try:
            data = self.body.read(len(target))
        except Exception as error:  # noqa: BLE001 - botocore/urllib3 stream errors
            self.failure = error
            raise OSError("download interrupted") from error
        target[: len(data)] = data
        return len(data)


def _encryption_failure(error: BaseException | None) -> RunbookError:
    if isinstance(error, RunbookError):
        return error
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        raise error
    detail = f"{type(error).__name__}: {error}" if error else "不明"
    return RunbookError(f"暗号化に失敗しました（{detail}）", "ファイルとディスクの状態を確認して再実行")


def _transfer_config(size: int) -> Any:
    from boto3.s3.transfer import TransferConfig

    chunk = max(8 * MIB, -(-(size + size // 1000 + MIB) // MAX_PARTS))
    chunk = -(-chunk // MIB) * MIB
    config = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                            max_concurrency=2, use_threads=True)
    config.max_in_memory_upload_chunks = 3  # a pipe is not seekable: parts are buffered
    return config


def _progress(console: Console, label: str) -> Callable[[int], None]:
    started = time.monotonic()
    return lambda done: console.progress(done, started, label)


def _plaintext_metadata(head: dict[str, Any]) -> tuple[str | None, int | None]:
    metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    sha256 = metadata.get(META_SHA256)
    try:
        size = int(metadata[META_SIZE]) if META_SIZE in metadata else None
    except ValueError:
        size = None
    return sha256, size


def _check_remote_separation(settings: Settings) -> None:
    """Two envs may not share a place in a bucket (prod and dev copies would mix)."""
    for other in sibling_settings(settings):
        same_store = (other.offsite_endpoint_url, other.offsite_bucket) == (
            settings.offsite_endpoint_url, settings.offsite_bucket)
        mine, theirs = settings.offsite_prefix, other.offsite_prefix
        if same_store and (mine.startswith(theirs) or theirs.startswith(mine)):
            raise RunbookError(
                f"環境 {settings.env} と {other.env} のオフサイトの置き場所が重なっています"
                f"（s3://{settings.offsite_bucket}/{mine} と {theirs}）",
                "OFFSITE_PREFIX を環境ごとに分ける（既定の <env>/ のままにする）",
                exit_code=2,
            )


# --- push -------------------------------------------------------------------


def verified_backup(settings: Settings, file: str | None = None,
                    console: Console | None = None) -> tuple[Path, str]:
    """The backup to send and its sha256: one that ``verify`` passed, unchanged since."""
    verified = verified_index(worklog.read_trusted(settings.worklog_path)[0], settings.env)
    if file:
        candidates = [resolve_file(settings, file)]
    else:
        # never one dated in the future: it would be "the newest" for months
        items = inventory(settings, with_globals=False)
        note = future_note(items)
        if note and console:
            console.warn(note)
        candidates = [item.backup.path for item in reversed(items) if not item.future]
    for index, path in enumerate(candidates):
        passed = sorted((when, sha) for (name, sha), when in verified.items() if name == path.name)
        recorded_sha = catalog.read_checksum(path)
        if recorded_sha is not None:
            if (path.name, recorded_sha) in verified:
                return _chosen(path, recorded_sha, candidates[:index], console)
        elif passed:  # an old hand-made file without a sidecar: its latest verify
            return _chosen(path, passed[-1][1], candidates[:index], console)
    if file:
        raise RunbookError(
            f"{candidates[0].name} は verify に合格した記録がありません（検証後に変わった可能性も）",
            f"invoke verify --env={settings.env} --file={candidates[0]} を先に実行",
        )
    raise RunbookError(
        f"{settings.backup_dir} に verify 済みのバックアップがありません"
        "（検証していないものはオフサイトに送りません）",
        f"invoke verify --env={settings.env} を先に実行",
    )


def _chosen(path: Path, sha256: str, newer: list[Path], console: Console | None) -> tuple[Path, str]:
    if newer and console:
        console.warn(f"より新しい {newer[0].name} は verify に合格していないため送りません"
                     "（先に invoke verify を実行）")
    return path, sha256


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
            return _already_there(remote, key, path, sha256, size, existing, console)
        metadata = {META_SHA256: sha256, META_SIZE: str(size), META_ENV: settings.env}
        pin = pinning.keep_until(local_manifest)
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


def retain_until(settings: Settings, path: Path, manifest: dict[str, Any] | None,
                 now: datetime | None = None) -> datetime:
    """When the object lock of a pushed backup ends (aware, UTC): its pin, else its
    creation + OFFSITE_RETENTION_DAYS (when offsite-prune would delete it), and at
    least a day from now."""
    now = now or datetime.now()
    parsed = catalog.parse(path)
    created = parsed.created if parsed else now
    candidates = [created + timedelta(days=settings.offsite_retention_days), now + timedelta(days=1)]
    pin = pinning.pinned_until(manifest)
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


def _already_there(remote: Remote, key: str, path: Path, sha256: str, size: int,
                   head: dict[str, Any], console: Console) -> PushResult:
    remote_sha, _ = _plaintext_metadata(head)
    if remote_sha != sha256:
        raise RunbookError(
            f"{remote.url(key)} は既にあり、内容が違います（上書きはしません）",
            "オフサイトの同名オブジェクトを offsite-list で確認",
        )
    console.summary(f"オフサイトに既にあります（sha256 一致）: {remote.url(key)}")
    return PushResult(path, remote.url(key), sha256, size, int(head.get("ContentLength", 0)), True)


def _encrypt_bytes(data: bytes, recipients: list[Any]) -> bytes:
    sealed = io.BytesIO()
    encrypt_stream(io.BytesIO(data), sealed, recipients)
    return sealed.getvalue()


def _check_uploaded(remote: Remote, key: str, path: Path, sha256: str, digest: Digest,
                    stored: int) -> None:
    if digest.sha256 != sha256:
        raise RunbookError(
            f"{path.name} が verify の後に変わっています（sha256 が記録と不一致）",
            "送信を取り消しました。verify をやり直してから再実行",
        )
    head = remote.head(key)
    remote_sha, remote_size = _plaintext_metadata(head or {})
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


# --- list -------------------------------------------------------------------


def list_remote(settings: Settings) -> tuple[str, list[RemoteBackup]]:
    remote = Remote(settings)
    remote.probe()
    return remote.location, remote.list(detailed=True)


def describe(backup: RemoteBackup) -> str:
    size = human_size(backup.size) if backup.size is not None else "?"
    sha = f"sha256 {backup.sha256[:12]}…" if backup.sha256 else "sha256 なし（キット以外の物）"
    return (f"{backup.created:%Y-%m-%d %H:%M:%S}  {size:>10}  {backup.name}  {sha}  "
            f"(保存 {human_size(backup.stored_size)})")


# --- pull -------------------------------------------------------------------


def pull_backup(settings: Settings, key_file: str | None, name: str | None = None,
                console: Console | None = None) -> Path:
    """Download, decrypt and check an offsite copy into the env's backup folder.

    The archive streams through the decryption into ``<name>.partial``; its
    sha256 must match the object's metadata and the manifest; then the
    sidecars are written and the file is linked to its final name (never over
    an existing one). Any failure removes what was written.
    """
    console = console or Console(settings.secrets())
    entry = Entry("offsite-pull", settings.env, settings.db_name, settings.db_container)
    with recorded(settings.worklog_path, entry, console.redact):
        identities = load_identities(key_file)
        remote = Remote(settings)
        remote.probe()
        if not name:
            note = future_remote_note(remote.list())
            if note:
                console.warn(note)
        target = remote.find(name)
        entry.details["remote"] = remote.url(target.key)
        _check_belongs(settings, target)
        head = remote.head(target.key)
        expected_sha, expected_size = _plaintext_metadata(head or {})
        if not expected_sha:
            raise RunbookError(f"{remote.url(target.key)} に sha256 のメタデータがありません",
                               "このキットが送ったオブジェクトではありません。手で確認する")
        final = settings.backup_dir / target.name
        entry.file = str(final)
        _refuse_existing(final)
        ensure_private_dir(settings.backup_dir)
        digest = _download_into(remote, target, final, expected_sha, expected_size,
                                identities, console)
        entry.sha256 = digest.sha256
        entry.details["size"] = digest.size
    console.summary(f"オフサイトから取得・復号・照合完了: {final} ({human_size(digest.size)}, "
                    f"sha256 {digest.sha256[:12]}…)")
    return final


def _check_belongs(settings: Settings, target: RemoteBackup) -> None:
    parsed = catalog.parse(Path(target.name))
    if parsed and parsed.env != settings.env:
        raise RunbookError(
            f"{target.name} は環境 {parsed.env} のバックアップです（指定は --env={settings.env}）",
            f"--env={parsed.env} で取得する",
        )


def _refuse_existing(final: Path) -> None:
    for path in (final, final.with_name(final.name + ".sha256"), final.with_name(final.name + ".json"),
                 final.with_name(final.name + catalog.PARTIAL_SUFFIX)):
        if path.exists():
            raise RunbookError(f"{path} が既に存在します（上書きはしません）",
                               "既存のファイルを確認し、必要なら別の場所へ移してから再実行")


def _download_into(remote: Remote, target: RemoteBackup, final: Path, expected_sha: str,
                   expected_size: int | None, identities: list[Any], console: Console) -> Digest:
    partial = final.with_name(final.name + catalog.PARTIAL_SUFFIX)
    sidecars = [final.with_name(final.name + ".sha256"), final.with_name(final.name + ".json")]
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    committed = False
    try:
        with os.fdopen(fd, "wb") as plain:
            console.step(f"ダウンロードしながら復号 → {partial.name}")
            reader = _BodyReader(remote.open_body(target.key))
            try:
                digest = decrypt_stream(reader, plain, identities, target.name,
                                        _progress(console, "ダウンロード・復号"))
            except RunbookError:
                if reader.failure is not None:
                    raise RunbookError(
                        f"{target.name} のダウンロードが途中で切れました（{type(reader.failure).__name__}）",
                        "ネットワークを確認して再実行",
                    ) from None
                raise
            console.clear_progress()
            if digest.sha256 != expected_sha or expected_size not in (None, digest.size):
                raise RunbookError(
                    f"復号した {target.name} の sha256 が送信時の記録と一致しません（壊れています）",
                    "このコピーは使わず、別の世代を offsite-list で選ぶ",
                )
            manifest = _pulled_manifest(remote, target, digest, identities)
            plain.flush()
            os.fsync(plain.fileno())
        write_private(sidecars[0], f"{digest.sha256}  {final.name}\n")
        if manifest is not None:
            write_private(sidecars[1], manifest.decode("utf-8"))
        try:
            os.link(partial, final)  # the commit point; fails rather than overwrite
        except FileExistsError:
            raise RunbookError(f"{final} が既に存在します（上書きはしません）",
                               "既存のファイルを確認") from None
        committed = True
        fsync_directory(final.parent)
    finally:
        partial.unlink(missing_ok=True)
        if not committed:
            for sidecar in sidecars:
                sidecar.unlink(missing_ok=True)
    return digest


def _pulled_manifest(remote: Remote, target: RemoteBackup, digest: Digest,
                     identities: list[Any]) -> bytes | None:
    sealed = remote.get_small(target.manifest_key)
    if sealed is None:
        return None
    plain = io.BytesIO()
    decrypt_stream(io.BytesIO(sealed), plain, identities, target.name + ".json")
    data = plain.getvalue()
    try:
        manifest = json.loads(data)
    except ValueError:
        raise RunbookError(f"{target.name} のマニフェストが JSON ではありません", "別の世代を使う") from None
    if manifest.get("sha256") not in (None, digest.sha256) or manifest.get("file") not in (None, target.name):
        raise RunbookError(f"{target.name} のマニフェストが本体と一致しません", "別の世代を使う")
    return data


# --- remote retention ----------------------------------------------------------


def prune_remote(settings: Settings, dry_run: bool = False,
                 console: Console | None = None) -> list[RemoteBackup]:
    """Delete offsite copies older than OFFSITE_RETENTION_DAYS; never the newest one.

    Returns what was (or, on dry_run, would be) deleted. Each deletion writes
    its own work-log line (task ``offsite-delete``). Takes no lock, so the
    local ``prune`` may call it while holding its own. With bucket versioning
    a deletion leaves a delete marker; the bucket's lifecycle rule removes the
    old version later (runbooks/offsite.md).
    """
    console = console or Console(settings.secrets())
    entry = Entry("offsite-prune", settings.env, settings.db_name, settings.db_container)
    log = nullcontext() if dry_run else recorded(settings.worklog_path, entry, console.redact)
    with log:
        remote = Remote(settings)
        remote.probe()
        backups = remote.list()
        cutoff = datetime.now() - timedelta(days=settings.offsite_retention_days)
        ahead = dated_ahead(backups)
        if ahead:
            console.warn(future_remote_note(backups) or "")
        # the newest real copy stays whatever its age; one dated in the future is never it
        real = [b for b in backups if b not in ahead]
        doomed = []
        for backup in (b for b in real[:-1] if b.created < cutoff):
            reason = protection(settings, remote, backup)
            if reason:
                console.summary(f"残します: {remote.url(backup.key)}（{reason}）")
                continue
            doomed.append(backup)
        entry.details.update(remote=remote.location, kept=len(backups) - len(doomed))
        for backup in doomed:
            if dry_run:
                console.step(f"削除予定: {remote.url(backup.key)}")
                continue
            _delete_logged(settings, remote, backup, console)
        entry.details["deleted"] = len(doomed)
    verb = "削除予定" if dry_run else "削除"
    console.summary(f"オフサイトの保持期間 {settings.offsite_retention_days} 日: {verb} {len(doomed)} 件、"
                    f"残す {len(backups) - len(doomed)} 件（{remote.location}）")
    return doomed


def dated_ahead(backups: list[RemoteBackup], now: datetime | None = None) -> list[RemoteBackup]:
    """The copies whose name is dated beyond now + catalog.FUTURE_TOLERANCE (a clock was ahead)."""
    horizon = (now or datetime.now()) + catalog.FUTURE_TOLERANCE
    return [b for b in backups if b.created > horizon]


def future_remote_note(backups: list[RemoteBackup]) -> str | None:
    """One sentence about offsite copies dated in the future, with what to do; None if none."""
    ahead = dated_ahead(backups)
    if not ahead:
        return None
    more = f" ほか {len(ahead) - 1} 件" if len(ahead) > 1 else ""
    return (f"日時が未来のオフサイトコピー {ahead[-1].name}{more} があり、最新とはみなしません"
            "（削除もしません）→ 送ったホストの時計を確認（timedatectl）。不要なら中身を確かめて手で削除")


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
    pins = [pinning.keep_until({"keep_until": metadata.get(META_KEEP_UNTIL)}),
            pinning.keep_until(catalog.read_manifest(settings.backup_dir / backup.name))]
    pin = max((p for p in pins if p), default=None)
    if pin and pin >= today:
        return f"固定 {pin:%Y-%m-%d} まで"
    return None


def _delete_logged(settings: Settings, remote: Remote, backup: RemoteBackup, console: Console) -> None:
    entry = Entry("offsite-delete", settings.env, settings.db_name, settings.db_container,
                  file=remote.url(backup.key))
    with recorded(settings.worklog_path, entry, console.redact):
        remote.delete(backup.manifest_key)
        remote.delete(backup.key)
        console.step(f"削除: {remote.url(backup.key)}")
