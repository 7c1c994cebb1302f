"""age encryption (https://age-encryption.org) through pyrage: streamed, memory flat.

Why pyrage: it is a wheel on PyPI (abi3, no compiler, no binary to fetch at
install time) that implements age in Rust, and its ``encrypt_io`` /
``decrypt_io`` stream between file objects in 64 KiB chunks, so a backup of
any size is encrypted with a few MiB of memory. The output is standard age:
Debian's ``age`` binary decrypts it (``age -d -i key.txt``), so a restore
never depends on this kit.

Backing up needs only the recipients (public keys, ``age1…``). The identity
(the private key, ``AGE-SECRET-KEY-1…``) is needed to decrypt and lives
offline, never on the DB server.

Plaintext is hashed while it streams, so the sha256 of what was encrypted
(or decrypted) is known without a second read.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError

RECIPIENT = re.compile(r"^age1[0-9a-z]{20,}$")
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
SUFFIX = ".age"


def pyrage() -> Any:
    """The pyrage module, or a clear error if the offsite extra is missing."""
    try:
        import pyrage as module
    except ImportError:
        raise RunbookError(
            "暗号化ライブラリ pyrage がインストールされていません",
            "pip install -e '.[offsite]'（または pip install pyrage）",
        ) from None
    return module


@dataclass(frozen=True)
class PlaintextHash:
    sha256: str
    size: int


def parse_recipients(texts: Iterable[str]) -> list[Any]:
    """age public keys (``age1…``) -> pyrage recipients. Raises RunbookError."""
    module = pyrage()
    recipients = []
    for text in texts:
        text = text.strip()
        if not text:
            continue
        try:
            recipients.append(module.x25519.Recipient.from_str(text))
        except Exception:  # noqa: BLE001 - pyrage.RecipientError and friends
            raise RunbookError(
                f"age の公開鍵 {text[:16]}… が不正です",
                "age-keygen -y <鍵ファイル> で表示される age1… を指定",
                exit_code=2,
            ) from None
    if not recipients:
        raise RunbookError(
            "暗号化の宛先（age の公開鍵）が指定されていません",
            "--recipient=age1… か、.env.<env> の OFFSITE_AGE_RECIPIENTS に設定",
            exit_code=2,
        )
    return recipients


def load_identities(key_file: str | Path | None) -> list[Any]:
    """Read an age identity file (age-keygen's format). Raises RunbookError."""
    if not key_file:
        raise RunbookError(
            "復号に使う秘密鍵ファイルが指定されていません",
            "--key=<age-keygen で作った鍵ファイル>（オフラインで保管しているもの）",
            exit_code=2,
        )
    path = Path(key_file).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RunbookError(
            f"秘密鍵ファイル {path} を読めません（{type(error).__name__}）",
            "パスと権限を確認（鍵は age-keygen -o で作成）",
            exit_code=2,
        ) from None
    module = pyrage()
    identities = []
    for line in lines:
        line = line.strip()
        if not line.startswith(IDENTITY_PREFIX):
            continue
        try:
            identities.append(module.x25519.Identity.from_str(line))
        except Exception:  # noqa: BLE001 - pyrage.IdentityError
            raise RunbookError(
                f"秘密鍵ファイル {path} の鍵が壊れています", "age-keygen で作った鍵ファイルを指定", 2
            ) from None
    if not identities:
        raise RunbookError(
            f"{path} に age の秘密鍵（AGE-SECRET-KEY-1…）がありません",
            "公開鍵ではなく、age-keygen で作った秘密鍵ファイルを指定",
            exit_code=2,
        )
    return identities


def public_key(identity: Any) -> str:
    """The recipient (``age1…``) an identity decrypts for."""
    return str(identity.to_public())


def fingerprint(recipient: str) -> str:
    """A short, stable name of a public key for records and the auditor's file:
    ``SHA256:`` and the first 16 hex digits of the sha256 of the ``age1…`` text."""
    return "SHA256:" + hashlib.sha256(recipient.strip().encode("ascii")).hexdigest()[:16]


class PlaintextReader(io.RawIOBase):
    """Reads from a source, hashing and counting what passes (the plaintext), as a stream
    for the encrypter (core.files.HashingReader is the file sender's: another mechanism)."""

    def __init__(self, source: Any, on_progress: Callable[[int], None] | None = None) -> None:
        self.source = source
        self.hash = hashlib.sha256()
        self.size = 0
        self.on_progress = on_progress

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[override]
        data = self.source.read(len(target))
        if not data:
            return 0
        target[: len(data)] = data
        self.hash.update(data)
        self.size += len(data)
        if self.on_progress:
            self.on_progress(self.size)
        return len(data)

    def digest(self) -> PlaintextHash:
        return PlaintextHash(self.hash.hexdigest(), self.size)


class PlaintextWriter(io.RawIOBase):
    """Writes to a file descriptor, hashing and counting (the decrypted plaintext)."""

    def __init__(self, target: BinaryIO, on_progress: Callable[[int], None] | None = None) -> None:
        self.target = target
        self.hash = hashlib.sha256()
        self.size = 0
        self.on_progress = on_progress

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        data = bytes(data)
        self.target.write(data)
        self.hash.update(data)
        self.size += len(data)
        if self.on_progress:
            self.on_progress(self.size)
        return len(data)

    def digest(self) -> PlaintextHash:
        return PlaintextHash(self.hash.hexdigest(), self.size)


def decrypt_failure(error: Exception, what: str) -> RunbookError:
    """pyrage's errors -> one operator line (wrong key vs damaged data)."""
    text = str(error)
    if "No matching keys" in text:
        return RunbookError(
            f"{what} をこの秘密鍵では復号できません（鍵が違います）",
            "暗号化に使った公開鍵（OFFSITE_AGE_RECIPIENTS）に対応する秘密鍵を --key に指定",
        )
    return RunbookError(
        f"{what} の復号に失敗しました（データが壊れているか改ざんされています: {text}）",
        "このコピーは使わず、別の世代を使う（offsite-list / 物理メディアの別コピー）",
    )


def encrypt_stream(source: Any, target: Any, recipients: list[Any],
                   on_progress: Callable[[int], None] | None = None) -> PlaintextHash:
    reader = PlaintextReader(source, on_progress)
    pyrage().encrypt_io(reader, target, recipients)
    return reader.digest()


def decrypt_stream(source: Any, target: BinaryIO, identities: list[Any], what: str,
                   on_progress: Callable[[int], None] | None = None) -> PlaintextHash:
    writer = PlaintextWriter(target, on_progress)
    module = pyrage()
    try:
        module.decrypt_io(source, writer, identities)
    except (module.DecryptError, OSError, ValueError) as error:
        raise decrypt_failure(error, what) from None
    return writer.digest()


def _progress(console: Console, label: str) -> Callable[[int], None]:
    started = time.monotonic()
    return lambda done: console.progress(done, started, label)


def _create_exclusive(path: Path) -> BinaryIO:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise RunbookError(f"{path} が既に存在します（上書きはしません）",
                           "別の場所に出力するか、既存のファイルを確認") from None
    return os.fdopen(fd, "wb")


def _commit(partial: Path, final: Path) -> None:
    try:
        os.link(partial, final)  # fails rather than overwrite
    except FileExistsError:
        raise RunbookError(f"{final} が既に存在します（上書きはしません）",
                           "別の場所に出力する") from None


def encrypt_file(source: Path, recipients_text: Iterable[str], output: Path | None = None,
                 console: Console | None = None) -> tuple[Path, PlaintextHash]:
    """F -> F.age via F.age.partial (for physical media). Never overwrites."""
    console = console or Console()
    if not source.is_file():
        raise RunbookError(f"{source} がありません", "暗号化するファイルのパスを確認")
    recipients = parse_recipients(recipients_text)
    final = output or source.with_name(source.name + SUFFIX)
    partial = final.with_name(final.name + ".partial")
    if final.exists():
        raise RunbookError(f"{final} が既に存在します（上書きはしません）", "既存のファイルを確認")
    with open(source, "rb") as plain, _create_exclusive(partial) as sealed:
        try:
            digest = encrypt_stream(plain, sealed, recipients, _progress(console, "暗号化"))
            sealed.flush()
            os.fsync(sealed.fileno())
            console.clear_progress()
            _commit(partial, final)
        finally:
            partial.unlink(missing_ok=True)
    console.summary(f"暗号化完了: {final} ({human_size(final.stat().st_size)}, 平文 sha256 "
                    f"{digest.sha256[:12]}…)")
    return final, digest


def decrypt_file(source: Path, key_file: str | Path | None, output: Path | None = None,
                 console: Console | None = None) -> tuple[Path, PlaintextHash]:
    """F.age -> F via F.partial; checks F.sha256 when it lies beside. Never overwrites."""
    console = console or Console()
    if not source.is_file():
        raise RunbookError(f"{source} がありません", "復号するファイル（.age）のパスを確認")
    identities = load_identities(key_file)
    if output is None:
        if not source.name.endswith(SUFFIX):
            raise RunbookError(f"{source.name} は .age ではありません", "--out で出力先を指定", 2)
        output = source.with_name(source.name[: -len(SUFFIX)])
    partial = output.with_name(output.name + ".partial")
    if output.exists():
        raise RunbookError(f"{output} が既に存在します（上書きはしません）", "--out で別の出力先を指定")
    with open(source, "rb") as sealed, _create_exclusive(partial) as plain:
        try:
            digest = decrypt_stream(sealed, plain, identities, source.name,
                                    _progress(console, "復号"))
            plain.flush()
            os.fsync(plain.fileno())
            console.clear_progress()
            _check_sidecar(source, output, digest, console)
            _commit(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    console.summary(f"復号完了: {output} ({human_size(digest.size)}, sha256 {digest.sha256})")
    return output, digest


def _check_sidecar(source: Path, output: Path, digest: PlaintextHash, console: Console) -> None:
    """Compare with ``<name>.sha256`` beside the output or beside the .age file, if any."""
    for sidecar in (output.with_name(output.name + ".sha256"),
                    source.with_name(output.name + ".sha256")):
        if not sidecar.is_file():
            continue
        recorded = (sidecar.read_text(encoding="utf-8").split() or [""])[0].lower()
        if recorded != digest.sha256:
            raise RunbookError(
                f"復号した内容の sha256 が {sidecar} と一致しません",
                "暗号化したファイルと .sha256 が別の世代のものか、データが壊れています",
            )
        console.step(f"sha256 照合 OK: {sidecar}")
        return
    console.warn("隣に .sha256 がないため照合していません（表示した sha256 を記録と比べてください）")


def generate_identity(output: Path) -> str:
    """Write a new identity in age-keygen's format (0600, never over a file); return the public key."""
    identity = pyrage().x25519.Identity.generate()
    public = str(identity.to_public())
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = f"# created: {created}\n# public key: {public}\n{identity}\n"
    with _create_exclusive(output) as handle:
        handle.write(text.encode())
        handle.flush()
        os.fsync(handle.fileno())
    return public
