"""The auditor's evidence of a faked fiscal year, made by the real CLI under ``faketime``
(Debian package) against the real server and moto's S3 with Object Lock on 127.0.0.1,
then opened in a real browser (Debian's chromium through Selenium), printed to PDF on A4,
and verified against the work log, also after the log was changed.

The year (FY2025: 2025-04-01 to 2026-03-31, FISCAL_YEAR_START's default):

* 04-01 backup + verify; 04-02 backup + verify + restore drill, and a release pin;
* 04-03 rows deleted, the backup is suspect (exit 3), verified;
* 04-04 to 04-06 nothing (a gap);
* 04-07 a replace (approved), its rollback, a replace again, a backup + verify;
* 2026-03-31 the year-end backup, labelled and pinned 10 years, verified, pushed offsite
  with a governance lock;
* 2026-04-05 a key drill with the escrowed identity; 2026-04-10 the evidence.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import PASSWORD, at_offset, last_line
from helpers.browser import CHROMEDRIVER, CHROMIUM, MISSING, WAIT_SECONDS, chromium_driver
from helpers.offsite import OffsiteCli
from pgrunbook.core import worklog
from pgrunbook.offsite.encryption import fingerprint

pytestmark = pytest.mark.skipif(shutil.which("faketime") is None,
                                reason="faketime (Debian package faketime) is not installed")

LOCKED = f"pgrunbook-evidence-{uuid.uuid4().hex[:6]}"


@dataclass
class Year:
    runner: OffsiteCli
    database: str
    backups: dict[str, Path]
    evidence: Path
    made: object  # the CompletedProcess of invoke evidence

    @property
    def log(self) -> Path:
        return self.runner.backup_dir("prod") / "worklog.jsonl"

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def on(runner: OffsiteCli, moment: str, *args: str, code: int = 0):
    """The CLI on a faked day (the clock starts there and runs on)."""
    done = at_offset(runner, f"@{moment}", *args, env=runner.s3.environment())
    assert done.returncode == code, f"{args}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def year(tmp_path_factory, pg, s3, age_keys) -> Year:
    s3.client.create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
    database = f"fy_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, sample=True)
    runner = OffsiteCli(tmp_path_factory.mktemp("fy2025"), s3, pg.name)
    runner.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=database, DB_PASSWORD=PASSWORD,
                     OFFSITE_BUCKET=LOCKED, OFFSITE_ENDPOINT_URL=s3.url, OFFSITE_REGION="us-east-1",
                     OFFSITE_AGE_RECIPIENTS=age_keys.public, OFFSITE_OBJECT_LOCK="governance",
                     OFFSITE_PREFIX="fy/")
    runner.write_env("dev", DB_CONTAINER=pg.name, DB_NAME=database + "_dev", DB_PASSWORD=PASSWORD)
    (runner.home / ".env.prod").chmod(0o600)
    backups = {}
    try:
        backups["04-01"] = Path(last_line(on(runner, "2025-04-01 02:00:00", "backup", "--env=prod").stdout))
        on(runner, "2025-04-01 02:05:00", "verify", "--env=prod")
        backups["04-02"] = Path(last_line(on(runner, "2025-04-02 02:00:00", "backup", "--env=prod").stdout))
        on(runner, "2025-04-02 02:05:00", "verify", "--env=prod")
        on(runner, "2025-04-02 04:00:00", "verify", "--env=prod", "--restore-test")
        on(runner, "2025-04-02 09:00:00", "pin", "--env=prod", f"--file={backups['04-02']}", "--keep=7y",
           "--label=release-2025-04")
        pg.psql("DELETE FROM audit.audit_log WHERE id > 100", database)
        backups["04-03"] = Path(last_line(on(runner, "2025-04-03 02:00:00", "backup", "--env=prod",
                                             code=3).stdout))
        on(runner, "2025-04-03 02:05:00", "verify", "--env=prod", f"--file={backups['04-03']}")
        replace = ("restore-replace", "--env=prod", f"--file={backups['04-02']}", "--confirm=prod")
        on(runner, "2025-04-07 10:00:00", *replace, "--approved-by=監査役 山田")
        log = runner.backup_dir("prod") / "worklog.jsonl"
        previous = [r for r in map(json.loads, log.read_text().splitlines())
                    if r["task"] == "restore-replace" and r["result"] == "ok"][-1]["previous"]
        on(runner, "2025-04-07 11:00:00", "restore-rollback", "--env=prod", f"--previous={previous}",
           "--confirm=prod")
        on(runner, "2025-04-07 12:00:00", *replace, "--approved-by=監査役 山田")
        backups["04-07"] = Path(last_line(on(runner, "2025-04-07 13:00:00", "backup", "--env=prod").stdout))
        on(runner, "2025-04-07 13:05:00", "verify", "--env=prod")
        backups["03-31"] = Path(last_line(on(runner, "2026-03-31 02:00:00", "backup", "--env=prod",
                                             "--label=fy2025-close", "--keep=10y").stdout))
        on(runner, "2026-03-31 02:05:00", "verify", "--env=prod")
        on(runner, "2026-03-31 03:00:00", "offsite-push", "--env=prod")
        on(runner, "2026-04-05 10:00:00", "key-drill", "--env=prod", f"--identity={age_keys.private}")
        made = on(runner, "2026-04-10 09:00:00", "evidence", "--env=prod")
        yield Year(runner, database, backups, Path(last_line(made.stdout)), made)
    finally:
        for name in pg.psql("SELECT datname FROM pg_database", "postgres").split():
            if name.startswith(database):
                pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres")


def test_the_evidence_is_sealed_in_the_work_log(year):
    assert year.evidence == year.runner.backup_dir("prod") / "evidence-prod-20250401-20260331.html"
    assert year.evidence.stat().st_mode & 0o777 == 0o600
    data = year.evidence.read_bytes()
    seal = year.records()[-1]
    assert seal["task"] == "evidence" and seal["result"] == "ok"
    assert seal["sha256"] == hashlib.sha256(data).hexdigest()
    assert seal["sha256"] in year.made.stdout + year.made.stderr
    assert seal["period_from"] == "2025-04-01" and seal["period_to"] == "2026-03-31"
    before = year.log.read_text().splitlines()[:-1]
    assert seal["chain_head"] == worklog.line_hash(before[-1]) and seal["chain_lines"] == len(before)
    page = data.decode()
    assert f'content="{seal["chain_head"]}"' in page
    # self-contained, and no secret of the settings
    assert not re.search(r"\b(src|href)\s*=", page, re.I) and "<script" not in page and "url(" not in page
    assert PASSWORD not in page and year.runner.s3.secret_key not in page

    verified = year.runner("evidence-verify", str(year.evidence))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert [line[:2] for line in verified.stdout.splitlines()] == ["OK", "OK", "OK"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(MISSING)
    driver = chromium_driver(tmp_path_factory.mktemp("chromium-evidence"),
                             "--proxy-server=http://127.0.0.1:9")  # nothing may leave: nowhere to go
    try:
        yield driver
    finally:
        driver.quit()


def test_the_evidence_shows_the_year_in_a_real_browser(year, browser, age_keys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("performance")
    browser.get(year.evidence.as_uri())
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda driver: driver.execute_script("return document.readyState") == "complete")

    def text(selector: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, selector).text

    def day(iso: str):
        cell = browser.find_element(By.CSS_SELECTOR, f'td[data-day="{iso}"]')
        return cell.get_attribute("class").split(), cell.get_attribute("title")

    assert text("#period") == "2025-04-01〜2026-03-31"
    assert day("2025-04-01")[0] == ["d-verified"]
    classes, title = day("2025-04-02")
    assert classes == ["d-verified", "drill"] and "復元訓練 成功 1 回" in title
    assert day("2025-04-03")[0] == ["d-suspect"]
    for quiet in ("2025-04-04", "2025-04-05", "2025-04-06", "2025-04-08", "2026-03-30"):
        assert day(quiet)[0] == ["d-none"], quiet
    assert day("2025-04-07")[0] == ["d-verified"]
    assert day("2026-03-31")[0] == ["d-verified"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "td[data-day]")) == 365
    gaps = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#gaps li")]
    assert gaps == ["2025-04-04〜2025-04-06（3 日）", "2025-04-08〜2026-03-30（357 日）"]
    assert text("#days-without") == str(365 - 4)
    assert year.backups["04-03"].name in text("#notable") and "疑わしい" in text("#notable")

    drills = browser.find_elements(By.CSS_SELECTOR, "#drills tbody tr")
    assert len(drills) == 1
    cells = [cell.text for cell in drills[0].find_elements(By.TAG_NAME, "td")]
    assert cells[0].startswith("2025-04-02 04:0") and cells[1] == year.backups["04-02"].name
    # RPO: the backup of 02:00 drilled at 04:00 (the drill's line is written when it ends)
    assert cells[2].endswith("秒") and cells[3] in ("1時間59分", "2時間0分", "2時間1分"), cells
    assert re.fullmatch(r"[1-9]\d* / [1-9]\d*", cells[4]) and cells[5] == "成功"

    changes = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
               for row in browser.find_elements(By.CSS_SELECTOR, "#changes tbody tr")]
    assert [row[1] for row in changes] == ["置き換え", "ロールバック", "置き換え"]
    assert [row[3] for row in changes] == ["監査役 山田", "—", "監査役 山田"]
    assert all(row[5] == "成功" for row in changes) and year.backups["04-02"].name in changes[0][4]
    assert "以前の DB" in changes[1][4]

    pins = {row.find_element(By.TAG_NAME, "td").text: [c.text for c in row.find_elements(By.TAG_NAME, "td")]
            for row in browser.find_elements(By.CSS_SELECTOR, "#pins tbody tr")}
    close = pins[year.backups["03-31"].name]
    assert close[1] == "fy2025-close" and close[2] == "2036-03-31"
    assert close[3] == year.backups["03-31"].with_name(year.backups["03-31"].name + ".sha256").read_text().split()[0]
    assert close[4].startswith("あり") and close[5] == f"fy/{year.backups['03-31'].name}.age"
    lock = year.runner.s3.client.head_object(Bucket=LOCKED, Key=close[5])
    assert lock["ObjectLockMode"] == "GOVERNANCE"
    assert close[6] == f"governance {lock['ObjectLockRetainUntilDate'].astimezone():%Y-%m-%d} まで"
    assert close[6] == "governance 2036-03-31 まで"
    release = pins[year.backups["04-02"].name]
    assert release[1] == "release-2025-04" and release[2] == "2032-04-02" and release[5].startswith("なし")
    offsite = browser.find_elements(By.CSS_SELECTOR, "#offsite tbody tr")
    assert len(offsite) == 1 and "governance 2036-03-31 まで" in offsite[0].text

    assert "成功" in text("#last-key-drill") and fingerprint(age_keys.public) in text("#last-key-drill")
    assert "記録なし" in text("#last-pitr-drill")
    seal = [r for r in year.records() if r["task"] == "evidence"][-1]
    assert text("#chain-head") == seal["chain_head"] and "途切れていません" in text("#chain-state")
    settings = text("#settings")
    assert fingerprint(age_keys.public) in settings and "prod" in settings and "governance" in settings

    # what the page asked for (Chromium's own pages, chrome://, are not the page's doing)
    asked = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in asked if m.get("method") == "Network.requestWillBeSent"
            and m["params"].get("documentURL", "").startswith("file://")]
    assert year.evidence.as_uri() in urls and all(url.startswith("file://") for url in urls), urls

    # printed: A4 pages (Chromium's own default is Letter), the calendar's colours kept
    pdf = base64.b64decode(browser.execute_cdp_cmd("Page.printToPDF", {"preferCSSPageSize": True})["data"])
    sizes = {(float(w), float(h)) for w, h in re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", pdf)}
    assert sizes and all(abs(w - 595.3) < 2 and abs(h - 841.9) < 2 for w, h in sizes), sizes


def test_a_changed_work_log_breaks_evidence_verify(year):
    original = year.log.read_bytes()
    lines = original.decode().splitlines()
    try:
        # a drill's result changed after the evidence was sealed
        edited = [line.replace('"result": "ok"', '"result": "failed"', 1) if '"restore-drill"' in line else line
                  for line in lines]
        year.log.write_text("\n".join(edited) + "\n")
        broken = year.runner("evidence-verify", str(year.evidence))
        assert broken.returncode == 1, broken.stdout
        assert "NG 封印まで" in broken.stdout and "改ざん" in broken.stdout
        assert "一致しません" in last_line(broken.stderr)

        # the same change with the whole chain recomputed: the page's own head catches it
        rebuilt: list[str] = []
        for line in edited:
            rebuilt.append(worklog.chained_line(json.loads(line), rebuilt[-1] if rebuilt else None))
        year.log.write_text("\n".join(rebuilt) + "\n")
        assert worklog.verify_chain(year.log).intact
        forged = year.runner("evidence-verify", str(year.evidence))
        assert forged.returncode == 1 and "NG 封印時の作業ログ" in forged.stdout, forged.stdout

        # lines appended since (normal work) are fine, and said
        year.log.write_bytes(original)
        assert year.runner("verify", "--env=prod", f"--file={year.backups['03-31']}").returncode == 0
        grown = year.runner("evidence-verify", str(year.evidence))
        assert grown.returncode == 0 and "1 行追記" in grown.stdout, grown.stdout

        # a line after the seal changed
        after = year.log.read_text().splitlines()
        after[-1] = after[-1].replace('"result": "ok"', '"result": "failed"')
        year.log.write_text("\n".join(after) + "\n")
        later = year.runner("evidence-verify", str(year.evidence))
        assert later.returncode == 1 and "NG 封印の後" in later.stdout, later.stdout
    finally:
        year.log.write_bytes(original)

    # the file itself changed by one byte: no seal matches it
    copy = year.evidence.with_name("copy.html")
    copy.write_bytes(year.evidence.read_bytes().replace(b"2036-03-31", b"2036-03-30", 1))
    changed = year.runner("evidence-verify", str(copy))
    assert changed.returncode == 1 and "NG ファイル" in changed.stdout, changed.stdout
