"""What the evidence file says (issue 25): the period, day by day, the drills, the changes
to live databases, the pins and the bucket's locks, the chain, the settings.

Read from the work log (only the lines before a broken link: ``worklog.read_trusted``'s
rule), the manifests and the bucket (``Remote``, read only; a configured bucket that
cannot be read fails: no half evidence). Pure functions over work-log records where
possible (``day_by_day``, ``gaps``, ``drill_rows``, ``change_rows``), so that the unit
tests cover them without an engine.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pgrunbook.core import worklog
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings, sibling_settings
from pgrunbook.monitoring.pitr_metrics import DRILL_TASK as PITR_DRILL_TASK
from pgrunbook.monitoring.report import parse_time
from pgrunbook.offsite import keydrill
from pgrunbook.offsite.encryption import fingerprint
from pgrunbook.offsite.remote import Remote, RemoteBackup
from pgrunbook.restore import drill
from pgrunbook.store import catalog, inventory, pins

BACKUP_TASKS = ("backup", "backup-sql")
SUCCESS = ("ok", "suspect")  # a suspect backup is a good file whose content looked wrong
# what changes a live database; restore-partial(-undo) by name, so they appear when that task lands
CHANGE_TASKS = ("restore-replace", "restore-rollback", "restore-partial", "restore-partial-undo",
                "restore-recover")


# ---- the period ---------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    first: date
    last: date

    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]

    def holds(self, moment: datetime | None) -> bool:
        return moment is not None and self.first <= moment.date() <= self.last

    @property
    def text(self) -> str:
        return f"{self.first.isoformat()}〜{self.last.isoformat()}"


def fiscal_year(settings: Settings, today: date) -> Period:
    """The last fiscal year that has ended by ``today``."""
    month, day = settings.fiscal_year_start
    start = date(today.year, month, day)
    if start > today:
        start = date(today.year - 1, month, day)
    return Period(date(start.year - 1, month, day), start - timedelta(days=1))


def _day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise RunbookError(f"{flag}={text!r} を日付として読めません", "YYYY-MM-DD で指定（例: 2025-04-01）",
                           exit_code=2) from None


def period_of(settings: Settings, first: str | None, last: str | None, today: date) -> Period:
    """--from / --to (inclusive) or the last fiscal year. --from alone: up to today."""
    if not first and not last:
        return fiscal_year(settings, today)
    end = _day(last, "--to") if last else today
    start = _day(first, "--from") if first else pins.add_months(end, -12) + timedelta(days=1)
    if end > today:
        raise RunbookError(f"--to={end} は未来の日付です",
                           "今日までの日付を指定（年度の途中なら --from だけ）", exit_code=2)
    if start > end:
        raise RunbookError(f"--from={start} が --to={end} より後です", "期間の始まりと終わりを確認",
                           exit_code=2)
    return Period(start, end)


# ---- day by day ---------------------------------------------------------------------


@dataclass
class Day:
    day: date
    backups: list[str] = field(default_factory=list)  # successful runs: file names
    verified: int = 0
    suspect: int = 0  # suspect and not accepted
    failed: int = 0
    drills_ok: int = 0
    drills_failed: int = 0

    def notes(self, passed_drills: bool = True) -> list[str]:
        """What else happened that day, in words (the calendar's title, the list of bad days)."""
        found = []
        if self.suspect:
            found.append(f"疑わしいバックアップ {self.suspect} 個（{', '.join(self.backups)}）")
        if self.failed:
            found.append(f"バックアップ失敗 {self.failed} 回")
        if self.drills_ok and passed_drills:
            found.append(f"復元訓練 成功 {self.drills_ok} 回")
        if self.drills_failed:
            found.append(f"復元訓練 失敗 {self.drills_failed} 回")
        return found

    @property
    def status(self) -> str:
        if self.verified:
            return "verified"
        if self.suspect:
            return "suspect"
        if self.backups:
            return "taken"
        if self.failed:
            return "failed"
        return "none"


def is_task(record: dict[str, Any], env: str, *tasks: str) -> bool:
    return record.get("env") == env and record.get("task") in tasks


def _name(record: dict[str, Any]) -> str:
    return Path(str(record.get("file") or "")).name


def day_by_day(records: list[dict[str, Any]], env: str, period: Period) -> list[Day]:
    """Each day of the period: the backups taken (verified by a later verify of the same
    bytes, or suspect), the failed runs, the restore drills."""
    verified = inventory.verified_index(records, env)
    accepted = {_name(r) for r in records if is_task(r, env, "accept-drift") and r.get("result") == "ok"}
    days = {day: Day(day) for day in period.days()}
    for record in records:
        when = parse_time(record.get("time"))
        if not period.holds(when):
            continue
        assert when is not None
        today = days[when.date()]
        if is_task(record, env, *BACKUP_TASKS):
            if record.get("result") in SUCCESS:
                today.backups.append(_name(record))
                sealed = (_name(record), record.get("sha256")) in verified
                suspect = record.get("result") == "suspect" and _name(record) not in accepted
                today.suspect += suspect
                today.verified += sealed and not suspect
            elif record.get("result") != "started":
                today.failed += 1
        elif is_task(record, env, drill.TASK):
            if record.get("result") == "ok":
                today.drills_ok += 1
            else:
                today.drills_failed += 1
    return list(days.values())


def gaps(days: list[Day]) -> list[tuple[date, date]]:
    """Runs of consecutive days without any successful backup (first, last)."""
    found: list[tuple[date, date]] = []
    run: list[date] = []
    for day in days:
        if not day.backups:
            run.append(day.day)
            continue
        if run:
            found.append((run[0], run[-1]))
        run = []
    if run:
        found.append((run[0], run[-1]))
    return found


# ---- drills and changes -------------------------------------------------------------


@dataclass(frozen=True)
class DrillRow:
    when: datetime
    file: str
    seconds: float  # RTO: the restore and its check, as measured
    backup_age: timedelta | None  # RPO: how old the restored backup was
    tables: int
    rows: int
    result: str
    error: str


def drill_rows(records: list[dict[str, Any]], env: str, period: Period) -> list[DrillRow]:
    rows = []
    for record in records:
        when = parse_time(record.get("time"))
        if not is_task(record, env, drill.TASK) or not period.holds(when):
            continue
        assert when is not None
        parsed = catalog.parse(Path(_name(record)))
        rows.append(DrillRow(when, _name(record), float(record.get("duration_seconds") or 0),
                             when - parsed.created if parsed else None,
                             int(record.get("tables_compared") or 0), int(record.get("rows_compared") or 0),
                             str(record.get("result")), str(record.get("error") or "")))
    return rows


@dataclass(frozen=True)
class ChangeRow:
    when: datetime
    task: str
    who: str
    approved_by: str
    what: str
    result: str
    error: str


def _what(record: dict[str, Any]) -> str:
    parts = []
    if record.get("file"):
        parts.append(_name(record))
    for key, label in (("previous", "以前の DB"), ("tables", "テーブル"), ("target", "対象"),
                       ("source_env", "元の環境"), ("interrupted", "中断されたもの")):
        value = record.get(key)
        if value not in (None, "", []):
            parts.append(f"{label} {value if not isinstance(value, dict) else value.get('task')}")
    return "、".join(str(part) for part in parts)


def change_rows(records: list[dict[str, Any]], env: str, period: Period) -> list[ChangeRow]:
    """Replaces, partial restores, rollbacks, recoveries. A ``started`` line with no end
    line of its run (killed) shows as interrupted."""
    rows = []
    finals = [r for r in records if is_task(r, env, *CHANGE_TASKS) and r.get("result") != "started"]
    for record in records:
        when = parse_time(record.get("time"))
        if not is_task(record, env, *CHANGE_TASKS) or not period.holds(when):
            continue
        assert when is not None
        result, error = str(record.get("result")), str(record.get("error") or "")
        if result == "started":
            if any(_same_run(record, final) for final in finals):
                continue  # its end line is listed
            result, error = "interrupted", f"終了の記録なし（{record.get('stage')} の段階で止まった）"
        rows.append(ChangeRow(when, str(record.get("task")),
                              f"{record.get('operator') or '?'}@{record.get('host') or '?'}",
                              str(record.get("approved_by") or ""), _what(record), result, error))
    return rows


def _same_run(started: dict[str, Any], final: dict[str, Any]) -> bool:
    """The end line of a ``started`` line: same task, begun before it, ended after it."""
    began, ended, at = worklog.started_at(final), worklog.ended_at(final), worklog.started_at(started)
    return (final.get("task") == started.get("task") and began is not None and at is not None
            and began <= at <= ended + 1)


# ---- pins and the bucket ------------------------------------------------------------


@dataclass(frozen=True)
class PinRow:
    name: str
    label: str
    keep_until: str
    sha256: str
    local: str  # what the folder holds of it
    offsite: RemoteBackup | None

    @property
    def lock_covers(self) -> bool:
        """The bucket's lock lasts at least as long as the pin."""
        until = pins.keep_until({"keep_until": self.keep_until})
        if self.offsite is None or self.offsite.retain_until is None or until is None:
            return False
        return self.offsite.retain_until.date() >= until


def _logged_pins(records: list[dict[str, Any]], env: str) -> dict[str, dict[str, Any]]:
    """File name -> its last pin as the work log tells it (None keep_until: unpinned)."""
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("result") not in SUCCESS or record.get("env") != env:
            continue
        if record.get("task") in ("pin", *BACKUP_TASKS) and record.get("keep_until"):
            found[_name(record)] = {"keep_until": record.get("keep_until"), "label": record.get("label"),
                                    "sha256": record.get("sha256")}
        elif record.get("task") == "unpin":
            found.pop(_name(record), None)
    return found


def pin_rows(settings: Settings, records: list[dict[str, Any]],
             copies: list[RemoteBackup] | None) -> list[PinRow]:
    """Every pinned backup: in the folder, in the work log, or pinned in the bucket's metadata."""
    local = {item.name: item for item in inventory.inventory(settings, with_globals=False)}
    remote = {copy.name: copy for copy in copies or []}
    pinned = _logged_pins(records, settings.env)
    for item in local.values():
        if item.keep_until:
            pinned[item.name] = {"keep_until": item.keep_until, "label": item.label,
                                 "sha256": item.recorded_sha256}
        else:
            pinned.pop(item.name, None)  # the manifest here is the truth: unpinned
    for copy in remote.values():
        if copy.keep_until and pins.keep_until({"keep_until": copy.keep_until}) \
                and copy.name not in pinned and copy.name not in local:
            pinned[copy.name] = {"keep_until": copy.keep_until, "label": None, "sha256": copy.sha256}
    rows = []
    for name in sorted(pinned, key=lambda n: catalog.order_key(n, _created(n))):
        facts = pinned[name]
        item = local.get(name)
        if item is None:
            here = "なし（このフォルダにはありません）"
        elif item.checksum == inventory.CHECKSUM_OK:
            here = "あり（チェックサム一致" + ("・検証済み）" if item.verified else "・未検証）")
        else:
            here = f"あり（チェックサム {item.checksum}）"
        parsed = catalog.parse(Path(name))
        label = facts.get("label") or (parsed.label if parsed else None) or ""
        rows.append(PinRow(name, label, str(facts["keep_until"]), str(facts.get("sha256") or ""), here,
                           remote.get(name)))
    return rows


def _created(name: str) -> datetime:
    parsed = catalog.parse(Path(name))
    return parsed.created if parsed else datetime.min


@dataclass(frozen=True)
class Bucket:
    location: str
    copies: list[RemoteBackup]


def read_bucket(settings: Settings) -> Bucket | None:
    """The env's offsite copies with their lock dates (a HEAD each); None without a bucket."""
    if not settings.offsite_bucket:
        return None
    remote = Remote(settings)
    remote.probe()
    return Bucket(remote.location, remote.list(detailed=True))


# ---- everything -----------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    settings: Settings
    period: Period
    made: datetime
    made_by: str
    days: list[Day]
    gaps: list[tuple[date, date]]
    drills: list[DrillRow]
    changes: list[ChangeRow]
    pins: list[PinRow]
    bucket: Bucket | None
    chain: worklog.ChainReport
    left_out: int  # lines after a broken link, not used
    key_drills: list[dict[str, Any]]  # all of the env's, oldest first
    pitr_drills: list[dict[str, Any]]
    key_drill_state: keydrill.Assessment | None
    settings_rows: list[tuple[str, str]]

    @property
    def chain_head(self) -> str:
        return self.chain.head or worklog.GENESIS


def settings_summary(settings: Settings) -> list[tuple[str, str]]:
    """What the auditor may see of the settings: retention, encryption by fingerprint,
    protected envs. Never a password, URL with a token, or key."""
    protected = [s.env for s in [settings, *sibling_settings(settings)] if s.protected]
    recipients = [f"{fingerprint(r)}（{r[:10]}…{r[-6:]}）" for r in settings.offsite_age_recipients]
    return [
        ("環境・対象", f"{settings.env}: コンテナ {settings.db_container or settings.db_service}、"
                   f"DB {settings.db_name}、ユーザー {settings.db_user}"),
        ("バックアップの保存先", str(settings.backup_dir)),
        ("保持（ローカル）", f"{settings.retention_days} 日はすべて、{settings.retention_weekly_days} 日まで"
                      f"週 1、{settings.retention_monthly_days} 日まで月 1、検証済みを最低 "
                      f"{settings.retention_min_keep} 個。固定したものは期限まで"),
        ("オフサイト", f"s3://{settings.offsite_bucket}/{settings.offsite_prefix}、"
                  f"{settings.offsite_retention_days} 日（最新の 1 つは常に残す）、オブジェクトロック "
                  f"{settings.offsite_object_lock or 'なし'}" if settings.offsite_bucket else "設定なし"),
        ("暗号化の宛先（age 公開鍵の指紋）", "、".join(recipients) or "設定なし"),
        ("保護環境（PROTECTED）", "、".join(sorted(protected)) or "なし"),
        ("内容の急変の判定", f"行数が {settings.drift_max_drop}% を超えて減ったら疑わしい"
                     f"（前回 {settings.drift_min_rows} 行以上のテーブル）"),
        ("鍵の訓練の上限", f"{settings.key_drill_max_age.days} 日"),
        ("PITR", f"スタンザ {settings.pitr_stanza}" if settings.pitr_stanza else "使わない"),
        ("年度の始まり", "{:02d}-{:02d}".format(*settings.fiscal_year_start)),
    ]


def collect(settings: Settings, period: Period, now: datetime | None = None) -> Evidence:
    now = now or datetime.now()
    bucket = read_bucket(settings)
    lines = worklog.raw_lines(settings.worklog_path)
    chain = worklog.check_chain(lines)
    trusted = lines if chain.intact else lines[: (chain.broken_line or 1) - 1]
    records = [r for r in (record_of(line) for line in trusted) if r is not None]
    env = settings.env
    days = day_by_day(records, env, period)
    return Evidence(
        settings=settings, period=period, made=now, made_by=f"{worklog.operator()}@{socket.gethostname()}",
        days=days, gaps=gaps(days), drills=drill_rows(records, env, period),
        changes=change_rows(records, env, period),
        pins=pin_rows(settings, records, bucket.copies if bucket else None), bucket=bucket,
        chain=chain, left_out=len(lines) - len(trusted),
        key_drills=[r for r in records if is_task(r, env, keydrill.TASK)],
        pitr_drills=[r for r in records if is_task(r, env, PITR_DRILL_TASK)],
        key_drill_state=keydrill.assess(settings, now.timestamp()),
        settings_rows=settings_summary(settings),
    )


def record_of(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
