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

import dataclasses
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings, sibling_settings
from pgrunbook.offsite.encryption import (
    PlaintextHash,
    encrypt_stream,
)
from pgrunbook.store import catalog

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
    # from the HEAD (list(detailed=True)): Object Lock as the bucket states it, and the pin
    lock_mode: str | None = None
    retain_until: datetime | None = None  # aware
    legal_hold: bool = False
    keep_until: str | None = None  # the pin carried in the metadata (ISO date)

    @property
    def manifest_key(self) -> str:
        return self.key[: -len(ARCHIVE_SUFFIX)] + MANIFEST_SUFFIX


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
        sha256, size = plaintext_metadata(head)
        metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        return dataclasses.replace(
            backup, sha256=sha256, size=size,
            lock_mode=str(head["ObjectLockMode"]).lower() if head.get("ObjectLockMode") else None,
            retain_until=head.get("ObjectLockRetainUntilDate"),
            legal_hold=str(head.get("ObjectLockLegalHoldStatus", "")).upper() == "ON",
            keep_until=metadata.get(META_KEEP_UNTIL))

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
                         extra: dict[str, Any] | None = None) -> tuple[PlaintextHash, int]:
        """Encrypt ``path`` in a thread into a pipe that the multipart upload reads."""
        read_fd, write_fd = os.pipe()
        sealed_out = os.fdopen(write_fd, "wb")
        sealed_in = os.fdopen(read_fd, "rb")
        outcome: dict[str, Any] = {}
        progress = progress_reporter(console, "暗号化・アップロード")

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


class BodyReader(io.RawIOBase):
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


def progress_reporter(console: Console, label: str) -> Callable[[int], None]:
    started = time.monotonic()
    return lambda done: console.progress(done, started, label)


def plaintext_metadata(head: dict[str, Any]) -> tuple[str | None, int | None]:
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


# --- list (offsite-list) -----------------------------------------------------------


def list_remote(settings: Settings) -> tuple[str, list[RemoteBackup]]:
    remote = Remote(settings)
    remote.probe()
    return remote.location, remote.list(detailed=True)


def describe(backup: RemoteBackup) -> str:
    size = human_size(backup.size) if backup.size is not None else "?"
    sha = f"sha256 {backup.sha256[:12]}…" if backup.sha256 else "sha256 なし（キット以外の物）"
    return (f"{backup.created:%Y-%m-%d %H:%M:%S}  {size:>10}  {backup.name}  {sha}  "
            f"(保存 {human_size(backup.stored_size)})")


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


