"""``evidence`` and ``evidence-verify``: the auditor's year in one sealed file (issue 25).

What ISO 27001 A.8.13 and an ordinary 会計監査 ask for is scattered over the
work log, the manifests and the bucket; ``evidence`` gathers it for a period
(default: the last fiscal year, FISCAL_YEAR_START) into one self-contained,
printable HTML page (``evidence_page``):

* day by day: was a backup taken, verified, drilled, or suspect; the gaps;
* every restore drill with its time to recover (RTO) and the age of the backup
  it restored (RPO), the tables and rows compared;
* every replace, partial restore, rollback and recovery: who, approved by whom;
* the pinned copies: label, keep-until, sha256, here or not, and the offsite
  object with its Object Lock retain-until as the bucket states it;
* the work log's hash chain, verified, with its head; the settings (no secret);
* the last key drill and the last PITR drill.

Only the work-log lines before a broken link are used (``worklog.read_trusted``);
the page says how many were left out. The bucket is read, never written: a
configured bucket that cannot be read fails the task (no half evidence).

The seal: the file's sha256, the period and the chain's head when the page was
made go into the work log as an ``evidence`` line, and the page carries the same
head. ``evidence-verify`` finds the line of a file's sha256, checks the chain up
to it, checks that the log's line the page names still has the page's hash (a
log rewritten with fresh hashes fails here), and says what happened to the log
since: lines appended (normal) or a broken link.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import ensure_private_dir, write_private
from pgrunbook.core.settings import Settings
from pgrunbook.monitoring import evidence_page
from pgrunbook.monitoring.evidence_facts import Period, collect, is_task, period_of, record_of

TASK = "evidence"
META = re.compile(rb'<meta name="pgrunbook-([a-z-]+)" content="([^"]*)">')


# ---- the seal -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sealed:
    path: Path
    sha256: str
    chain_head: str
    period: Period


def write_evidence(settings: Settings, first: str | None, last: str | None, output: Path | None,
                   console: Console) -> Sealed:
    """Make the page, write it (0600, atomically), and seal it with one work-log line."""
    entry = worklog.Entry(TASK, settings.env, settings.db_name, settings.db_container)
    written: Path | None = None
    try:
        with worklog.recorded(settings.worklog_path, entry, console.redact):
            now = datetime.now()
            period = period_of(settings, first, last, now.date())
            entry.details.update(period_from=period.first.isoformat(), period_to=period.last.isoformat())
            target = output or settings.backup_dir / f"evidence-{settings.env}-{period.first:%Y%m%d}-" \
                                                     f"{period.last:%Y%m%d}.html"
            if output is None:
                ensure_private_dir(settings.backup_dir)
            elif not target.parent.is_dir():
                raise RunbookError(f"出力先のディレクトリ {target.parent} がありません",
                                   "--output に既存のディレクトリの中のパスを指定")
            console.step(f"{period.text} の証跡を集めます（作業ログ・マニフェスト"
                         + ("・バケット" if settings.offsite_bucket else "") + "）")
            evidence = collect(settings, period, now)
            page = evidence_page.render(evidence).encode("utf-8")
            write_private(target, page)
            written = target
            entry.file, entry.sha256 = str(target), hashlib.sha256(page).hexdigest()
            entry.details.update(chain_head=evidence.chain_head, chain_lines=evidence.chain.lines)
    except BaseException:
        if written is not None:  # never an unsealed file that looks finished
            written.unlink(missing_ok=True)
        raise
    assert entry.sha256 is not None
    return Sealed(target, entry.sha256, evidence.chain_head, period)


def file_meta(data: bytes) -> dict[str, str]:
    """The ``<meta name="pgrunbook-…">`` values of an evidence page."""
    return {name.decode(): value.decode("utf-8", "replace") for name, value in META.findall(data[:8192])}


def read_file(file: Path) -> tuple[bytes, dict[str, str]]:
    try:
        data = file.read_bytes()
    except OSError as error:
        raise RunbookError(f"{file} を読めません（{error.strerror or error}）", "パスを確認",
                           exit_code=2) from None
    meta = file_meta(data)
    if "chain-head" not in meta or "env" not in meta:
        raise RunbookError(f"{file.name} は pgrunbook の証跡ファイルではありません",
                           "invoke evidence が作った HTML を指定", exit_code=2)
    return data, meta


@dataclass(frozen=True)
class Verdict:
    ok: bool
    lines: list[str]


def verify_evidence(settings: Settings, file: Path) -> Verdict:
    """Does the file match a sealed line of this env's work log, and what became of the log since?"""
    data, meta = read_file(file)
    if meta["env"] != settings.env:
        raise RunbookError(f"{file.name} は環境 {meta['env']} の証跡です（指定は --env={settings.env}）",
                           f"--env={meta['env']} で確かめる", exit_code=2)
    sha256 = hashlib.sha256(data).hexdigest()
    lines = worklog.raw_lines(settings.worklog_path)
    seals = [(number, record) for number, record in enumerate((record_of(line) for line in lines), start=1)
             if record and is_task(record, settings.env, TASK) and record.get("sha256") == sha256
             and record.get("result") == "ok"]
    if not seals:
        return Verdict(False, [f"NG ファイル: sha256 {sha256[:16]}… は作業ログ {settings.worklog_path} の"
                               "どの evidence 行にもありません"
                               "（ファイルが書き換えられたか、封印の行が消された）"])
    number, seal = seals[-1]
    out = [f"OK ファイル: sha256 {sha256[:16]}… は作業ログの {number} 行目に封印されています"
           f"（{str(seal.get('time'))[:16]}、{seal.get('operator')}@{seal.get('host')}、期間 "
           f"{seal.get('period_from')}〜{seal.get('period_to')}）"]
    ok = True
    before = worklog.check_chain(lines[:number])
    if not before.intact:
        ok = False
        out.append(f"NG 封印まで: {before.describe()}（この証跡が作られた後に書き換えられた）")
    sealed_lines = int(meta.get("chain-lines") or 0)
    now_head = (worklog.line_hash(lines[sealed_lines - 1]) if 0 < sealed_lines <= len(lines)
                else worklog.GENESIS)
    if now_head != meta["chain-head"]:
        ok = False
        out.append(f"NG 封印時の作業ログ: 証跡に書いた {sealed_lines} 行目の先頭 "
                   f"{meta['chain-head'][:16]}… が、今の作業ログでは {now_head[:16]}… です"
                   "（作業ログが作り直されています）")
    elif before.intact:
        out.append(f"OK 封印時の作業ログ: {sealed_lines} 行、先頭 {meta['chain-head'][:16]}… は今も同じ")
    after = worklog.check_chain(lines)
    added = len(lines) - number
    if not after.intact and (after.broken_line or 0) > number:
        ok = False
        out.append(f"NG 封印の後: {after.describe()}")
    elif after.intact:
        out.append(f"OK 封印の後: {added} 行追記、鎖は途切れていません（現在 {len(lines)} 行、"
                   f"先頭 {(after.head or '')[:16]}…）")
    return Verdict(ok, out)

