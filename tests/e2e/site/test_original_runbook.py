"""The team's own runbook on the site, verbatim: the kept copy, the 元の手順書 tabs and page.

The site is built by the real `invoke docs-build` (strict). Builds of a changed
copy of the project show that the blocks come from the file (a changed line
changes the site) and that a block left out, or a renamed heading, fails the
build. Unit tests below cover the parser.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from pgrunbook.site import original

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("markdown_it")

KEPT = ROOT / original.ORIGINAL_RUNBOOK

STEP_PAGES = ("backup", "verify", "restore", "automation")


def run_invoke(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**__import__("os").environ, "PGRUNBOOK_HOME": str(cwd)})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("original-site")
    done = run_invoke("docs-build", f"--output={work / 'site'}", cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    return work / "site"


@pytest.fixture(scope="module")
def runbook() -> original.Runbook:
    return original.Runbook.load(KEPT)


def text_of(html_text: str) -> str:
    """What a reader sees: tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_text))


def page_text(site: Path, name: str) -> str:
    return text_of((site / f"{name}.html").read_text(encoding="utf-8"))


def tab_panels(page_html: str) -> list[tuple[list[str], list[str]]]:
    """Each content tab set of a page: (labels, panels' HTML), in order."""
    sets = []
    for chunk in page_html.split('<div class="tabbed-set tabbed-alternate"')[1:]:
        labels_html = chunk.split('<div class="tabbed-content">', 1)[0]
        labels = [text_of(label).strip() for label in re.findall(r"<label[^>]*>(.*?)</label>", labels_html)]
        content = chunk.split('<div class="tabbed-content">', 1)[1]
        panels = re.split(r'<div class="tabbed-block">', content)[1:]
        sets.append((labels, panels[:len(labels)]))
    return sets


def test_kept_copy_is_byte_identical_to_the_shared_spec():
    shared = (ROOT / original.SHARED_SPEC).resolve()
    if not shared.is_file():
        pytest.skip(f"{shared} がありません（チェックアウトの隣に shared/ がない）")
    assert KEPT.read_bytes() == shared.read_bytes(), (
        f"{KEPT.relative_to(ROOT)} が {shared} と違います: cp で取り込み直し、各手順の「元の手順書」タブを見直します"
    )


def test_kept_copy_is_no_page_of_its_own(site):
    assert not (site / "original" / "backup-restore-runbook.ja.html").exists()
    assert not list(site.rglob("backup-restore-runbook*"))


def test_every_code_line_and_heading_of_the_runbook_is_on_the_site(site, runbook):
    everything = "\n".join(text_of(path.read_text(encoding="utf-8")) for path in site.rglob("*.html"))
    steps = "\n".join(page_text(site, name) for name in STEP_PAGES)
    lines = [line for block in runbook.code_blocks for line in block.command_lines()]
    assert len(lines) == 30 and len(runbook.code_blocks) == 9  # the runbook as the issue counted it
    missing_on_site = [line for block in runbook.code_blocks for line in block.content.splitlines()
                       if line.strip() and line not in everything]
    assert missing_on_site == []
    missing_beside_a_step = [line for line in lines if line not in steps]
    assert missing_beside_a_step == []
    headings = [runbook.title] + [section.title for section in runbook.sections]
    assert [heading for heading in headings if heading not in everything] == []


def test_the_issue_examples_are_beside_their_tasks(site):
    backup, restore, automation = (page_text(site, name) for name in ("backup", "restore", "automation"))
    assert 'docker exec -i knot-db pg_dump -U app -d app -F c -f "/tmp/${BACKUP_NAME}"' in backup
    assert '"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = \'app\';"' in restore
    assert 'docker exec -i knot-db psql -U app -d postgres -c "DROP DATABASE app;"' in restore
    assert 'docker exec -i knot-db psql -U app -d app < "./backups/prod/${BACKUP_NAME}"' in restore
    assert "0 2 * * * /bin/bash -lc 'cd /path/to/knot && BACKUP_DATE=$(date +\\%Y\\%m\\%d) \\" in automation


def test_step_tabs_are_task_manual_and_original(site, runbook):
    shown = 0
    for name in STEP_PAGES:
        page_html = (site / f"{name}.html").read_text(encoding="utf-8")
        for labels, panels in tab_panels(page_html):
            if "元の手順書" not in labels:
                continue
            assert labels[-1] == "元の手順書" and labels[0] in ("タスク", "手作業"), (name, labels)
            panel = text_of(panels[-1])
            if "の原文です" in panel:
                assert "キットとの違い" in panel, (name, panel[:200])
                # tabs are linked and remembered: the original must not pass for what to run
                assert "手で行うときは「手作業」タブのコマンドを使います" in panel, name
                shown += 1
            else:  # a step the team's runbook has no section for: where it says something near
                assert 'href="original.html#' in panels[-1], (name, panel[:200])
    assert shown >= len(original.SECTIONS)


def test_replace_tab_says_why_the_kit_does_not_drop_first(site):
    restore = (site / "restore.html").read_text(encoding="utf-8")
    panels = [text_of(panels[-1]) for labels, panels in tab_panels(restore) if labels[-1] == "元の手順書"]
    replace = next(panel for panel in panels if "DROP DATABASE app;" in panel)
    assert "元の手順は先に DROP します。ファイルが壊れていると戻せません。" in replace
    assert "確かめてから" in replace and "名前を入れ替え" in replace
    sql = next(panel for panel in panels if 'psql -U app -d app < "./backups/prod/${BACKUP_NAME}"' in panel)
    assert "ON_ERROR_STOP" in sql and "--single-transaction" in sql


def test_original_blocks_link_to_their_heading_on_the_original_page(site):
    original_html = (site / "original.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([^"]+)"', original_html))
    links = re.findall(r'href="original\.html#([^"]+)"', (site / "backup.html").read_text(encoding="utf-8"))
    assert links and all(html.unescape(link) in ids for link in links)


def test_original_page_shows_the_whole_runbook_in_order(site, runbook):
    page_html = (site / "original.html").read_text(encoding="utf-8")
    headings = [text_of(h).replace("¶", "").strip()
                for h in re.findall(r"<h[1-6][^>]*>(.*?)</h[1-6]>", page_html, re.S)]
    expected = [runbook.title] + [section.title for section in runbook.sections]
    assert [h for h in headings if h in expected] == expected
    text = text_of(page_html)
    for block in runbook.code_blocks:
        assert block.content.rstrip("\n") in text
    assert runbook.digest() in text  # an auditor can compare it with the approved copy
    assert '<ol start="3">' in page_html  # "3. リストア（カスタム形式）" keeps its number


def test_home_page_links_to_the_original(site):
    index = (site / "index.html").read_text(encoding="utf-8")
    article = index.split('<article', 1)[1]
    assert 'href="original.html"' in article


def project_copy(tmp_path: Path) -> Path:
    for name in ("mkdocs.yml", "docs_hooks.py", "tasks.py", ".env.example", "crontab.example"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "tasks_by_area", tmp_path / "tasks_by_area")
    shutil.copytree(ROOT / "runbooks", tmp_path / "runbooks")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # embedded by the PITR page
    return tmp_path


def mkdocs_build(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-f", str(root / "mkdocs.yml"), "-d", str(root / "out")],
                          capture_output=True, text=True, cwd=root, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})


def test_a_changed_line_of_the_runbook_changes_the_site(tmp_path):
    root = project_copy(tmp_path)
    kept = root / original.ORIGINAL_RUNBOOK
    text = kept.read_text(encoding="utf-8")
    changed = text.replace('docker exec -i knot-db pg_dump -U app -d app -F c -f "/tmp/${BACKUP_NAME}"',
                           'docker exec -i knot-db2 pg_dump -U app -d app -F c -f "/tmp/${BACKUP_NAME}"')
    assert changed != text
    kept.write_text(changed, encoding="utf-8")
    done = mkdocs_build(root)
    assert done.returncode == 0, done.stderr
    backup = text_of((root / "out" / "backup.html").read_text(encoding="utf-8"))
    assert "docker exec -i knot-db2 pg_dump" in backup
    assert 'docker exec -i knot-db pg_dump -U app -d app -F c -f "/tmp/' not in backup


def test_a_new_block_of_the_runbook_on_no_step_page_fails_the_build(tmp_path):
    root = project_copy(tmp_path)
    kept = root / original.ORIGINAL_RUNBOOK
    kept.write_text(kept.read_text(encoding="utf-8")
                    + "\n## 新しい手順\n\n```bash\ndocker exec -i knot-db vacuumdb -U app app\n```\n",
                    encoding="utf-8")
    done = mkdocs_build(root)
    assert done.returncode != 0
    assert "どの手順のページにも載っていません" in done.stderr and "新しい手順" in done.stderr
    assert not (root / "out" / "index.html").exists()


def test_a_renamed_heading_of_the_runbook_fails_the_build(tmp_path):
    root = project_copy(tmp_path)
    kept = root / original.ORIGINAL_RUNBOOK
    kept.write_text(kept.read_text(encoding="utf-8").replace("### cron の例（ホスト側）", "### cron の例"),
                    encoding="utf-8")
    done = mkdocs_build(root)
    assert done.returncode != 0
    assert "automation.md" in done.stderr and "cron の例（ホスト側）" in done.stderr


def test_missing_runbook_fails_the_build(tmp_path):
    root = project_copy(tmp_path)
    (root / original.ORIGINAL_RUNBOOK).unlink()
    done = mkdocs_build(root)
    assert done.returncode != 0
    assert "backup-restore-runbook.ja.md がありません" in done.stderr
