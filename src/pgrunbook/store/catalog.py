"""Backup file names and the backups of an env's folder.

Name: ``<prefix>-<env>-<YYYYMMDD>-<HHMMSS>[-<n>][-<label>].<dump|sql>`` beside
``<name>.sha256`` and ``<name>.json``. The runbook's older hand-made names
(``knot-prod-20260128.dump``) are recognised as ``legacy``. Roles and other
cluster-wide objects (``pg_dumpall --globals-only``) are saved as
``<prefix>-<env>-globals-<YYYYMMDD>-<HHMMSS>[-<n>].sql``, format ``globals``:
never a database backup, so ``backups_in`` leaves them out unless asked.
A label (``backup --label=fy2025-close``) starts with a letter, so it never
reads as the serial number.

A backup may be a symlink in the folder (the file itself moved to a bigger
disk): its sidecars are read beside the link, else beside the link's target.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pgrunbook.core.files import write_private

EXTENSIONS = {"custom": "dump", "plain": "sql", "globals": "sql"}
FORMAT_OF_EXTENSION = {"dump": "custom", "sql": "plain"}
GLOBALS = "globals"
NAME = re.compile(
    r"^(?P<prefix>[A-Za-z0-9][A-Za-z0-9_]*)-(?P<env>[a-z][a-z0-9_]*)(?P<globals>-globals)?"
    r"-(?P<date>\d{8})(?:-(?P<time>\d{6}))?(?:-(?P<serial>\d+))?"
    r"(?:-(?P<label>[a-z][a-z0-9]*(?:-[a-z0-9]+)*))?\.(?P<ext>dump|sql)$"
)
LABEL = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
LABEL_MAX = 40
PARTIAL_SUFFIX = ".partial"
# a backup dated later than now + this was made under a clock that was wrong (or the
# clock is wrong now): it is never "the newest" (it would hide every later backup)
FUTURE_TOLERANCE = timedelta(minutes=10)
SIDECAR_SUFFIXES = (".sha256", ".json")


@dataclass(frozen=True)
class BackupFile:
    path: Path
    prefix: str
    env: str
    created: datetime
    format: str
    legacy: bool
    label: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checksum_path(self) -> Path:
        return sidecar(self.path, ".sha256")

    @property
    def manifest_path(self) -> Path:
        return sidecar(self.path, ".json")

    @property
    def sidecars(self) -> list[Path]:
        """The sidecars in the folder, beside the path (what goes with it when it is removed)."""
        return [self.path.with_name(self.path.name + suffix) for suffix in SIDECAR_SUFFIXES]

    @property
    def is_globals(self) -> bool:
        return self.format == GLOBALS

    def manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.path)


def sidecar(path: Path, suffix: str) -> Path:
    """A backup's ``<file><suffix>``: beside the path given, which may be a symlink in
    the backup folder; when there is none there, beside the link's target (the whole
    set moved elsewhere, only the link left)."""
    beside = path.with_name(path.name + suffix)
    if beside.exists() or not path.is_symlink():
        return beside
    target = path.resolve()
    at_target = target.with_name(target.name + suffix)
    return at_target if at_target.exists() else beside


def names_of(path: Path) -> set[str]:
    """The names a manifest may give the file: the path's, and its target's if a symlink."""
    return {path.name, path.resolve().name} if path.is_symlink() else {path.name}


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a backup file (``<file>.json``, see ``sidecar``), or None."""
    try:
        return json.loads(sidecar(path, ".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_checksum(path: Path) -> str | None:
    """The sha256 recorded for a backup file (``<file>.sha256``, see ``sidecar``): None
    when there is no sidecar, "" when it is empty."""
    try:
        words = sidecar(path, ".sha256").read_text(encoding="utf-8").split()
    except OSError:
        return None
    return words[0].lower() if words else ""


def manifest_time(manifest: dict[str, Any] | None) -> datetime | None:
    """When the manifest says the backup started, as local time without a zone (as in names)."""
    text = (manifest or {}).get("started_at")
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.astimezone().replace(tzinfo=None) if when.tzinfo else when


def ahead_of(backup: BackupFile, manifest: dict[str, Any] | None, now: datetime) -> timedelta | None:
    """How far in the future the backup is dated (by its name or its manifest), when that
    is beyond FUTURE_TOLERANCE; None for a backup dated in the past (the normal case)."""
    dates = [backup.created] + [t for t in (manifest_time(manifest),) if t is not None]
    ahead = max(dates) - now
    return ahead if ahead > FUTURE_TOLERANCE else None


def order_key(name: str, created: datetime) -> tuple[datetime, int, str]:
    """Oldest first: by time, then by the serial of backups made in the same second
    (``…-020000.dump`` before ``…-020000-1.dump``: by name alone "-" sorts first)."""
    match = NAME.match(name)
    serial = int(match.group("serial")) if match and match.group("serial") else 0
    return created, serial, name


def backup_name(prefix: str, env: str, when: datetime, fmt: str, serial: int = 0,
                label: str | None = None) -> str:
    stamp = when.strftime("%Y%m%d-%H%M%S")
    suffix = f"-{serial}" if serial else ""
    kind = f"-{GLOBALS}" if fmt == GLOBALS else ""
    tag = f"-{label}" if label else ""
    return f"{prefix}-{env}{kind}-{stamp}{suffix}{tag}.{EXTENSIONS[fmt]}"


def parse(path: Path) -> BackupFile | None:
    match = NAME.match(path.name)
    if not match:
        return None
    date, time = match.group("date"), match.group("time")
    is_globals = match.group("globals") is not None
    if is_globals and (time is None or match.group("ext") != "sql"):
        return None  # the kit always writes globals with a time, as .sql
    if match.group("label") and time is None:
        return None  # the kit writes labels only after a time
    try:
        created = datetime.strptime(date + (time or "000000"), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return BackupFile(
        path=path,
        prefix=match.group("prefix"),
        env=match.group("env"),
        created=created,
        format=GLOBALS if is_globals else FORMAT_OF_EXTENSION[match.group("ext")],
        legacy=time is None,
        label=match.group("label"),
    )


def backups_in(
    directory: Path, prefix: str | None = None, *, with_globals: bool = False
) -> list[BackupFile]:
    """The backups in a folder, oldest first (partial files never count).

    Globals files (roles) are left out unless ``with_globals``: a task that
    wants "the newest backup" must never be handed a file of roles.
    """
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if not path.is_file():
            continue
        backup = parse(path)
        wanted = backup and (prefix is None or backup.prefix == prefix)
        if wanted and (with_globals or not backup.is_globals):
            found.append(backup)
    return sorted(found, key=lambda b: order_key(b.name, b.created))


def free_name(directory: Path, prefix: str, env: str, when: datetime, fmt: str,
              label: str | None = None) -> Path:
    """A final name that no file (or sidecar) uses yet: never overwrite."""
    for serial in range(0, 1000):
        candidate = directory / backup_name(prefix, env, when, fmt, serial, label)
        siblings = (candidate, candidate.with_name(candidate.name + ".sha256"),
                    candidate.with_name(candidate.name + ".json"))
        if not any(p.exists() for p in siblings):
            return candidate
    raise RuntimeError("no free backup name")  # pragma: no cover


def write_checksum(path: Path, sha256: str) -> None:
    """The ``<name>.sha256`` beside ``path``, in the form ``sha256sum -c`` checks."""
    write_private(path.with_name(path.name + ".sha256"), f"{sha256}  {path.name}\n")


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The ``<name>.json`` beside ``path`` (atomic, 0600)."""
    write_private(path.with_name(path.name + ".json"),
                  json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
