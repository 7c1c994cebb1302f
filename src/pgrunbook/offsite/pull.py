"""``offsite-pull``: download, decrypt and check a copy back into the env's backup
folder. The plaintext is hashed as it is decrypted into ``<name>.partial`` and
compared with the metadata and the manifest before the file gets its final name.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import fsync_directory, write_private
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, ensure_private_dir, recorded
from pgrunbook.offsite.encryption import (
    PlaintextHash,
    decrypt_stream,
    load_identities,
)
from pgrunbook.offsite.remote import (
    BodyReader,
    Remote,
    RemoteBackup,
    future_remote_note,
    plaintext_metadata,
    progress_reporter,
)
from pgrunbook.store import catalog


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
        final = settings.backup_dir / target.name
        entry.file = str(final)
        _refuse_existing(final)
        ensure_private_dir(settings.backup_dir)
        digest = fetch(remote, target, final, identities, console)
        entry.sha256 = digest.sha256
        entry.details["size"] = digest.size
    console.summary(f"オフサイトから取得・復号・照合完了: {final} ({human_size(digest.size)}, "
                    f"sha256 {digest.sha256[:12]}…)")
    return final


def fetch(remote: Remote, target: RemoteBackup, final: Path, identities: list[Any],
          console: Console) -> PlaintextHash:
    """One copy of this env, downloaded and decrypted to ``final`` with its sidecars, its
    sha256 checked against the object's metadata and the manifest (``offsite-pull``,
    ``key-drill``). Nothing is left under ``final`` unless every check passed."""
    _check_belongs(remote.settings, target)
    head = remote.head(target.key)
    expected_sha, expected_size = plaintext_metadata(head or {})
    if not expected_sha:
        raise RunbookError(f"{remote.url(target.key)} に sha256 のメタデータがありません",
                           "このキットが送ったオブジェクトではありません。手で確認する")
    return _download_into(remote, replace(target, sha256=expected_sha, size=expected_size), final,
                          identities, console)


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


def _download_into(remote: Remote, target: RemoteBackup, final: Path, identities: list[Any],
                   console: Console) -> PlaintextHash:
    """``target`` into ``final``; its decrypted sha256 and size must be ``target.sha256`` and
    ``target.size`` (the size when known), as the object's metadata states them."""
    expected_sha, expected_size = target.sha256, target.size
    partial = final.with_name(final.name + catalog.PARTIAL_SUFFIX)
    sidecars = [final.with_name(final.name + ".sha256"), final.with_name(final.name + ".json")]
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    committed = False
    try:
        with os.fdopen(fd, "wb") as plain:
            console.step(f"ダウンロードしながら復号 → {partial.name}")
            reader = BodyReader(remote.open_body(target.key))
            try:
                digest = decrypt_stream(reader, plain, identities, target.name,
                                        progress_reporter(console, "ダウンロード・復号"))
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


def _pulled_manifest(remote: Remote, target: RemoteBackup, digest: PlaintextHash,
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


