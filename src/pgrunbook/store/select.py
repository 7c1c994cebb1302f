"""Which backup? One answer for every task.

* ``resolve_file``: the file named with ``--file`` (relative to the backup folder
  if not found as is), or the env's default: the newest whatever its format
  (verify checks the backup just made), or the one a restore should take;
* ``restore_default``: what a restore takes without ``--file``;
* ``sound`` / ``newest_sound``: the backups a restore may trust as "the newest"
  (restore_default, the prestaged copy and check's prestaged line);
* ``verified_backup``: what ``offsite-push`` sends: one that ``verify`` passed,
  unchanged since.

Never one dated in the future (a clock that was ahead would make it "the
newest" for months), never a suspect one (content drift) unless nothing else
is left, never one whose checksum disagrees with its manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import read_trusted
from pgrunbook.store import catalog, inventory
from pgrunbook.store.inventory import CHECKSUM_MISMATCH, Inventoried, future_note, verified_index


def sound(items: list[Inventoried]) -> list[Inventoried]:
    """The backups a restore may trust as "the newest": not dated in the future, not
    suspect (content drift), and not in disagreement with their manifest's checksum."""
    return [item for item in items
            if not item.future and not item.suspect and item.checksum != CHECKSUM_MISMATCH]


def newest_sound(settings: Settings) -> Inventoried | None:
    """This env's newest backup a restore may trust, or None."""
    items = sound(inventory.inventory(settings, with_globals=False))
    return items[-1] if items else None


def resolve_file(
    settings: Settings, file: str | None, console: Console | None = None, *, newest: bool = False
) -> Path:
    """The file given (relative to the backup folder if not found as is), or the
    env's default backup: with ``newest``, the newest one whatever its format (verify
    checks the backup just made); otherwise the one a restore should take
    (``restore_default``). Never one dated in the future. With a console, says which
    file was chosen and why."""
    if file:
        path = Path(file).expanduser()
        if not path.exists() and not path.is_absolute():
            in_folder = settings.backup_dir / path
            path = in_folder if in_folder.exists() else path
        if not path.exists():
            raise RunbookError(f"{file} がありません", f"invoke list --env={settings.env} でファイルを確認")
        # absolute, but a symlink stays the link: its sidecars are beside it (catalog.sidecar)
        return Path(os.path.abspath(path))
    items = inventory.inventory(settings, with_globals=False)
    note = future_note(items)
    if note and console:
        console.warn(note)
    usable = [item for item in items if not item.future]
    if not usable:
        raise RunbookError(
            f"{settings.backup_dir} に環境 {settings.env} のバックアップがありません"
            + ("（未来の日時のものを除く）" if items else ""),
            f"invoke backup --env={settings.env} で作成",
        )
    if newest:
        return usable[-1].backup.path
    chosen, why = restore_default(usable)
    if console:
        console.step(f"--file の指定がないため {why} {chosen.name} を使います")
    return chosen.backup.path


def restore_default(items: list[Inventoried]) -> tuple[Inventoried, str]:
    """What a restore takes without --file: the newest verified custom-format backup,
    else the newest verified one, else the newest custom-format one, else the newest;
    never one whose checksum disagrees with its manifest nor a suspect one (content
    drift: an emptied or other database) unless nothing else is left.
    Returns the item and the reason in words."""
    trusted = sound(items) or items
    preferences = (
        (lambda i: i.verified and i.backup.format == "custom", "検証済みで最新のカスタム形式"),
        (lambda i: i.verified, "検証済みで最新の"),
        (lambda i: i.backup.format == "custom", "最新のカスタム形式（未検証）"),
        (lambda i: True, "最新の（未検証）"),
    )
    for wanted, why in preferences:
        matching = [item for item in trusted if wanted(item)]
        if matching:
            return matching[-1], why
    raise AssertionError("restore_default needs at least one item")  # pragma: no cover


def verified_backup(settings: Settings, file: str | None = None,
                    console: Console | None = None) -> tuple[Path, str]:
    """The backup to send and its sha256: one that ``verify`` passed, unchanged since."""
    verified = verified_index(read_trusted(settings.worklog_path)[0], settings.env)
    if file:
        candidates = [resolve_file(settings, file)]
    else:
        # never one dated in the future: it would be "the newest" for months
        items = inventory.inventory(settings, with_globals=False)
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


