"""``key-drill``: the escrowed age identity tried on the newest offsite copy (issue 25).

Backups lost with their key are a recurring story: the encryption worked for
years, and on the day it mattered the one identity that opens the copies was
lost, or was not the one the recipients name. The drill does what a clean host
would do with nothing but the escrowed identity file:

1. the identity's public key is compared with OFFSITE_AGE_RECIPIENTS before
   anything is downloaded (a wrong file is refused at once, and logged);
2. the newest offsite copy is downloaded and decrypted while it is hashed, and
   its sha256 is checked against the object's metadata and the manifest
   (``pull.fetch``, the same code as ``offsite-pull``);
3. the archive's table of contents is read (``pg_restore --list`` on the host
   when it has one, else in the DB container), or a plain dump's ending.

The plaintext exists only in a private scratch folder inside BACKUP_DIR
(``.key-drill-*``, 0700), removed at the end; one left by a ``kill -9`` is
removed by the next drill (drills of an env take one lock). Each drill leaves
one ``key-drill`` line in the work log: the copy, the identity's fingerprint
(never the key), the sha256 and what the TOC held. ``check``, ``status``, the
metrics and ``evidence`` read those lines (``drills``, ``assess``).
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pgrunbook.core import worklog
from pgrunbook.core.console import Console, human_size
from pgrunbook.core.durations import describe_age
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.files import ensure_private_dir
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, recorded
from pgrunbook.infra.archive import SQL_COMPLETE, read_sql_tail, sql_tail_is_complete
from pgrunbook.offsite.encryption import fingerprint, load_identities, public_key
from pgrunbook.store import catalog

TASK = "key-drill"
SCRATCH_PREFIX = ".key-drill-"


def drills(settings: Settings) -> list[dict[str, Any]]:
    """This env's key-drill lines, oldest first (only lines before a broken chain count)."""
    records, _ = worklog.read_trusted(settings.worklog_path)
    return [r for r in records if r.get("task") == TASK and r.get("env") == settings.env]


def matching_recipients(settings: Settings, identities: list[Any]) -> list[str]:
    """The recipients of OFFSITE_AGE_RECIPIENTS that these identities decrypt for."""
    mine = {public_key(identity) for identity in identities}
    return [recipient for recipient in settings.offsite_age_recipients if recipient in mine]


def _check_identity(settings: Settings, identity_file: str | None, entry: Entry) -> list[Any]:
    identities = load_identities(identity_file)
    if not settings.offsite_age_recipients:
        raise RunbookError(f"環境 {settings.env} に OFFSITE_AGE_RECIPIENTS が設定されていません",
                           f".env.{settings.env} に暗号化の宛先（age1…）を書く", exit_code=2)
    entry.details["identity_fingerprints"] = [fingerprint(public_key(i)) for i in identities]
    matched = matching_recipients(settings, identities)
    if not matched:
        known = "、".join(fingerprint(r) for r in settings.offsite_age_recipients)
        raise Refused(
            f"この秘密鍵（{'、'.join(entry.details['identity_fingerprints'])}）は OFFSITE_AGE_RECIPIENTS の"
            f"どの公開鍵（{known}）にも対応しません（何もダウンロードしていません）",
            "保管している鍵が違うか、宛先が変わっています。age-keygen -y <鍵ファイル> の age1… と "
            f".env.{settings.env} を比べ、正しい鍵で再実行（鍵を失ったなら新しい鍵で取り直す）")
    entry.details["recipient_fingerprint"] = fingerprint(matched[0])
    return identities


def _clear_leftovers(folder: Path) -> None:
    """Scratch folders of drills that did not finish (kill -9): plaintext, removed."""
    for leftover in folder.glob(SCRATCH_PREFIX + "*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def _check_contents(settings: Settings, path: Path, console: Console, entry: Entry) -> None:
    """The decrypted archive is a backup: its TOC reads and holds data (a plain dump: its ending)."""
    backup = catalog.parse(path)
    if backup is not None and backup.format == "plain":
        if not sql_tail_is_complete(read_sql_tail(path), SQL_COMPLETE):
            raise RunbookError(f"復号した {path.name} の末尾に pg_dump の完了コメントがありません",
                               "途中で切れた SQL です。このコピーは使わず、別の世代を確かめる")
        entry.details["contents"] = "SQL の完了コメントあり"
        return
    from pgrunbook.backup.verify import table_of_contents  # start-up time: status and check assess only

    toc = table_of_contents(settings, path, console)
    if not toc.ok:
        raise RunbookError(f"復号した {path.name} の目次: {toc.detail}", toc.hint)
    expected = len((catalog.read_manifest(path) or {}).get("tables") or [])
    entry.details.update(toc_tables=toc.tables, toc_table_data=toc.data, manifest_tables=expected)
    if toc.data == 0 and expected:
        raise RunbookError(f"復号した {path.name} の目次にテーブルのデータがありません"
                           f"（マニフェストではテーブル {expected}）",
                           "このコピーは使わず、別の世代を確かめる")
    entry.details["contents"] = f"目次 OK（TABLE {toc.tables}、TABLE DATA {toc.data}）"


def key_drill(settings: Settings, identity_file: str | None, console: Console) -> dict[str, Any]:
    """Fetch, decrypt and check the newest offsite copy with only ``identity_file``; one
    work-log line whatever the outcome. Returns what the line records."""
    from pgrunbook.offsite.pull import fetch  # start-up time: status and check assess only
    from pgrunbook.offsite.remote import Remote  # start-up time, as above

    entry = Entry(TASK, settings.env, settings.db_name, settings.db_container)
    started = time.monotonic()
    with recorded(settings.worklog_path, entry, console.redact):
        identities = _check_identity(settings, identity_file, entry)
        remote = Remote(settings)
        remote.probe()
        target = remote.find(None)
        entry.file = target.name
        entry.details["remote"] = remote.url(target.key)
        ensure_private_dir(settings.backup_dir)
        with exclusive_lock(settings.backup_dir, settings.db_container, "key-drill", TASK):
            _clear_leftovers(settings.backup_dir)
            scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=settings.backup_dir))  # 0700
            try:
                console.step(f"{remote.url(target.key)} を秘密鍵だけで取得・復号・照合（作業場所 {scratch}）")
                digest = fetch(remote, target, scratch / target.name, identities, console)
                entry.sha256 = digest.sha256
                entry.details["size"] = digest.size
                _check_contents(settings, scratch / target.name, console, entry)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        entry.details["seconds"] = round(time.monotonic() - started, 3)
    console.summary(f"鍵の訓練 OK: {target.name}（{human_size(digest.size)}、sha256 {digest.sha256[:12]}…、"
                    f"{entry.details['contents']}）を鍵 {entry.details['recipient_fingerprint']} で"
                    "復号できました。平文は削除済み")
    return {"file": target.name, "sha256": digest.sha256, **entry.details}


# ---- how old is the last one (check, status) ------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """The env's key drills against KEY_DRILL_MAX_AGE."""

    level: str  # "ok", "stale" (none, or the last passed one too old) or "failed"
    text: str
    todo: str = ""

    @property
    def ok(self) -> bool:
        return self.level == "ok"


def assess(settings: Settings, now: float | None = None) -> Assessment | None:
    """None for an env without an offsite bucket (nothing to drill)."""
    if not settings.offsite_bucket:
        return None
    now = time.time() if now is None else now
    todo = f"invoke key-drill --env={settings.env} --identity=<保管している age の秘密鍵ファイル>"
    limit = describe_age(settings.key_drill_max_age)
    lines = drills(settings)
    passed = [line for line in lines if line.get("result") == "ok"]
    if lines and lines[-1].get("result") != "ok":
        last = lines[-1]
        return Assessment("failed", f"最後の鍵の訓練（{str(last.get('time'))[:16]}）は "
                                    f"{last.get('result')}: {last.get('error') or ''}"
                                    "（保管している鍵でコピーを開けない恐れ）", todo)
    if not passed:
        return Assessment("stale", f"鍵の訓練の記録がありません（上限 {limit}）", todo)
    last = passed[-1]
    age = timedelta(seconds=max(now - worklog.ended_at(last), 0.0))
    text = (f"最後の鍵の訓練 {str(last.get('time'))[:16]}（{describe_age(age)}前、上限 {limit}）: "
            f"{last.get('file')} を鍵 {last.get('recipient_fingerprint')} で復号")
    if age > settings.key_drill_max_age:
        return Assessment("stale", text, todo)
    return Assessment("ok", text)


# ---- the same by hand (runbooks/audit.md) ----------------------------------------------


def manual_commands(settings: Settings, name: str, identity: str = "key.txt") -> list[str]:
    """key-drill by hand on a clean host: aws CLI, age, sha256sum, pg_restore."""
    endpoint = f" --endpoint-url {shlex.quote(settings.offsite_endpoint_url)}" \
        if settings.offsite_endpoint_url else ""
    bucket = settings.offsite_bucket or "<OFFSITE_BUCKET>"
    key = shlex.quote(f"{settings.offsite_prefix}{name}.age")
    recipients = ",".join(settings.offsite_age_recipients) or "<OFFSITE_AGE_RECIPIENTS>"
    return [
        f"age-keygen -y {shlex.quote(identity)}   # 表示される age1… が OFFSITE_AGE_RECIPIENTS "
        f"（{recipients}）にあること",
        f"aws s3 ls{endpoint} s3://{bucket}/{settings.offsite_prefix}   # 最新の .age を選ぶ",
        f"aws s3api head-object{endpoint} --bucket {bucket} --key {key} "
        "--query 'Metadata.\"pgrunbook-sha256\"'",
        "mkdir -m 700 key-drill",
        f"aws s3 cp{endpoint} s3://{bucket}/{key} - | age -d -i {shlex.quote(identity)} "
        f"> key-drill/{shlex.quote(name)}",
        f"sha256sum key-drill/{shlex.quote(name)}   # head-object の pgrunbook-sha256 と同じこと",
        f"pg_restore --list key-drill/{shlex.quote(name)} | grep -c 'TABLE DATA'   # 1 以上",
        "rm -r key-drill   # 平文を残さない",
    ]
