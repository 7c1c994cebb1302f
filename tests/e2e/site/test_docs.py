"""The runbook site: a strict build through the real `invoke docs-build`, and what it holds.

One build per test session (module fixture); the unit tests below it cover the
generator's pure logic (markers, references, missing files).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers import ROOT
from pgrunbook.infra import manual
from pgrunbook.site import docs

pytest.importorskip("mkdocs")
pytest.importorskip("material")

JAPANESE_WORDS = ("リストア", "空ファイル", "本番")


def run_invoke(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PGRUNBOOK_HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args],
                          capture_output=True, text=True, env=environment, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built by `invoke docs-build` (strict) into a temporary folder."""
    work = tmp_path_factory.mktemp("docs")
    output = work / "site"
    done = run_invoke("docs-build", f"--output={output}", cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(output / "index.html")
    return output


def html_files(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def page_text(path: Path) -> str:
    """What a reader sees: tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def all_text(site: Path) -> str:
    return "\n".join(page_text(path) for path in html_files(site))


@pytest.fixture(scope="module")
def namespace():
    return docs.load_namespace(ROOT / "tasks.py")


def test_strict_build_writes_every_page(site):
    for page in ("index", "backup", "verify", "restore", "rules", "automation", "troubleshooting",
                 "reference/tasks", "reference/settings"):
        assert (site / f"{page}.html").is_file(), page


def test_every_task_appears_with_its_help(site, namespace):
    text = page_text(site / "reference" / "tasks.html")
    entries = docs.task_entries(namespace)
    assert {"backup", "verify", "docs", "docs-build"} <= {name for name, _ in entries}
    for name, task in entries:
        assert f"invoke {name}" in text, name
        docstring = docs.task_docstring(task)
        assert docstring, f"task {name} has no docstring"
        for paragraph in docs._paragraphs(docstring):
            assert paragraph in text, (name, paragraph)
        for argument in task.get_arguments():
            assert argument.help, f"{name} --{argument.name} has no help"
            assert argument.help in text, (name, argument.help)
            assert docs._flag(argument) in text, (name, docs._flag(argument))


def test_example_files_are_embedded_verbatim(site):
    raw = {path: html.unescape(path.read_text(encoding="utf-8")) for path in html_files(site)}
    for name, page in ((".env.example", "reference/settings.html"), ("crontab.example", "automation.html")):
        content = (ROOT / name).read_text(encoding="utf-8").rstrip("\n")
        assert content in raw[site / page], name


def test_manual_commands_come_from_the_code(site):
    example = docs.Example(docs.example_settings(ROOT / ".env.example"))
    text = page_text(site / "backup.html")
    for line in manual.backup_commands(example.settings, "custom", example.archive("custom")):
        assert line in text
    restore = page_text(site / "restore.html")
    for line in manual.restore_replace_commands(example.settings, example.archive(),
                                                example.staging, example.previous):
        assert line in restore


def test_dangerous_steps_carry_a_danger_admonition(site):
    restore = (site / "restore.html").read_text(encoding="utf-8")
    blocks = re.findall(r'<(div|details) class="(?:admonition )?danger"[^>]*>(.*?)</\1>', restore, re.S)
    titles = [html.unescape(re.sub(r"<[^>]+>", "", body)) for _, body in blocks]
    assert sum("DROP DATABASE" in title for title in titles) >= 2
    assert any("置き換え" in title for title in titles)


class _Links(HTMLParser):
    ATTRIBUTES = {"src", "href", "srcset", "action", "poster", "data", "formaction"}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in self.ATTRIBUTES and value:
                self.found.append((tag, name, value))
            if name == "style" and value and "url(" in value:
                self.found.append((tag, name, value))

EXTERNAL = re.compile(r"(?i)(^|[\s,(\"'])(?:[a-z][a-z0-9+.-]*:)?//")


def test_no_external_host_is_referenced(site):
    offenders = []
    for path in html_files(site):
        parser = _Links()
        parser.feed(path.read_text(encoding="utf-8"))
        for tag, name, value in parser.found:
            if EXTERNAL.search(value) or value.lower().startswith(("http:", "https:")):
                offenders.append(f"{path.relative_to(site)}: <{tag} {name}={value!r}>")
    for path in site.rglob("*.css"):
        css = path.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r"(?i)(@import|url\()\s*['\"]?(https?:)?//", css):
            offenders.append(f"{path.relative_to(site)}: {match.group(0)}")
    assert offenders == []
    assert "fonts.googleapis" not in "".join(p.read_text(encoding="utf-8") for p in html_files(site))


def test_links_work_from_a_file_server(site):
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="backup.html"' in index  # use_directory_urls: false
    assert 'href="reference/tasks.html"' in index


def test_search_index_finds_japanese_words(site):
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    assert index["config"]["lang"] == ["ja"]
    separator = re.compile(index["config"]["separator"])
    text = "\n".join(doc["title"] + "\n" + doc["text"] for doc in index["docs"])
    tokens = {token for token in separator.split(text) if token}
    for word in JAPANESE_WORDS:
        assert word in text, word
        assert any(word in token for token in tokens), word
    titles = {doc["title"] for doc in index["docs"]}
    assert "リストア" in titles


def content_for(root: Path) -> docs.SiteContent:
    return docs.SiteContent(root, lambda: docs.load_namespace(root / "tasks.py"))


def test_marker_keeps_indentation_for_tabs():
    content = content_for(ROOT)
    expanded = content.expand('=== "手作業"\n\n    <!-- pgrunbook:manual verify -->\n')
    code = [line for line in expanded.splitlines()[2:] if line]
    assert code[0] == "    ```bash" and code[-1] == "    ```"
    assert all(line.startswith("    ") for line in code)
    assert "pg_restore --list" in expanded


def test_unknown_marker_or_step_fails(tmp_path):
    content = content_for(ROOT)
    with pytest.raises(docs.DocsError, match="no-such-step"):
        content.expand("<!-- pgrunbook:manual no-such-step -->")
    with pytest.raises(docs.DocsError, match="不明なマーカー"):
        content.expand("<!-- pgrunbook:tasks-reference -->")
    with pytest.raises(docs.DocsError, match="埋め込めない"):
        content.expand("<!-- pgrunbook:file .env.prod -->")


def test_missing_embedded_file_fails_the_real_build(tmp_path):
    for name in ("mkdocs.yml", "docs_hooks.py", "tasks.py", ".env.example"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "tasks_by_area", tmp_path / "tasks_by_area")
    shutil.copytree(ROOT / "runbooks", tmp_path / "runbooks")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-f", str(tmp_path / "mkdocs.yml"), "-d", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode != 0
    assert "crontab.example" in done.stderr + done.stdout


def test_example_settings_never_carry_a_password(tmp_path, monkeypatch):
    example = tmp_path / ".env.example"
    example.write_text((ROOT / ".env.example").read_text(encoding="utf-8") + "DB_PASSWORD=Secret-1\n")
    monkeypatch.setenv("PGRUNBOOK_PROD_DB_PASSWORD", "Secret-2")
    settings = docs.example_settings(example)
    assert settings.db_password is None and settings.env == "prod"
    text = "\n".join(docs.manual_steps(docs.Example(settings))["backup"]())
    assert "Secret" not in text and "PGPASSWORD" not in text


def test_task_reference_lists_whatever_tasks_exist():
    from invoke import Collection, task

    @task(help={"keep": "残す世代数", "dry_run": "何もしない"})
    def prune(c, keep=3, dry_run=False):
        """古いバックアップを <env> ごとに削除する。

        二段落目の説明。
        """

    sub = Collection("offsite")
    sub.add_task(prune, name="push")
    reference = docs.task_reference(Collection(prune, sub))
    assert "invoke prune" in reference and "invoke offsite.push" in reference
    assert "古いバックアップを &lt;env&gt; ごとに削除する。" in reference
    assert "<p>二段落目の説明。</p>" in reference
    assert "--keep=整数" in reference and "残す世代数" in reference and "<td>3</td>" in reference
    assert "--dry-run" in reference and "しない" in reference


def test_settings_reference_documents_every_key():
    from pgrunbook.core.settings import KEYS

    parsed = docs.parse_env_example((ROOT / ".env.example").read_text(encoding="utf-8"))
    assert {doc.key for doc in parsed} == set(KEYS)
    assert all(doc.comment for doc in parsed)
    reference = docs.settings_reference((ROOT / ".env.example").read_text(encoding="utf-8"))
    for key in KEYS:
        assert f">{key}</code>" in reference
    assert "<h2" not in reference and "## 対象の DB" in reference


def test_drop_procedure_never_targets_the_live_database():
    settings = docs.example_settings(ROOT / ".env.example")
    with pytest.raises(ValueError):
        manual.drop_database_commands(settings, settings.db_name)
    lines = manual.restore_replace_commands(settings, settings.backup_dir / "x.dump", "app_staging_1",
                                            "app_before_1")
    assert not any("DROP DATABASE" in line for line in lines)
    swap = next(line for line in lines if "RENAME" in line)
    assert swap.index("pg_terminate_backend") < swap.index("RENAME TO app_before_1") \
        < swap.index("app_staging_1 RENAME TO app")


def search(site: Path, *words: str) -> dict[str, list[str]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node がないため検索ワーカーを実行できません")
    done = subprocess.run([node, str(ROOT / "tests" / "search_worker.js"), str(site), *words],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {word: [re.sub(r"<[^>]+>", "", title) for title in titles]
            for word, titles in json.loads(done.stdout).items()}


def test_search_finds_japanese_words_as_typed(site):
    found = search(site, *JAPANESE_WORDS, "権限エラー", "取り違え")
    for word, titles in found.items():
        assert titles, word
    assert found["空ファイル"][0] == "バックアップを取ったつもりで空ファイルだった"
    assert found["権限エラー"][0] == "権限エラーで復元できない"
    assert "リストア" in found["リストア"]


def test_search_works_from_a_file_server(site):
    assert (site / "search" / "search_index.js").is_file()  # offline plugin: no fetch on file://
    index = (site / "index.html").read_text(encoding="utf-8")
    polyfills = re.findall(r'<script src="(assets/javascripts/(?:iframe-worker|search-ja)\.js)"', index)
    assert polyfills == ["assets/javascripts/iframe-worker.js", "assets/javascripts/search-ja.js"]
    assert "unpkg" not in index


def test_pitr_page_embeds_the_files_the_tests_run_and_the_hand_commands(site):
    """runbooks/pitr.md shows examples/pitr/* verbatim (tests/test_pitr.py builds and runs
    the same files) and the pitr tasks' own hand commands."""
    from pgrunbook.pitr import pgbackrest as pitr_pgbackrest

    text = page_text(site / "pitr.html")  # highlighted code: the text without its tags
    for name in ("compose.yaml", "Dockerfile", "pgbackrest.conf"):
        content = (ROOT / "examples" / "pitr" / name).read_text(encoding="utf-8").rstrip("\n")
        assert content in text, name
    example = docs.Example(docs.example_settings(ROOT / ".env.example"))
    for lines in pitr_pgbackrest.manual_steps(example.settings).values():
        for line in lines():
            assert line in text, line
    assert "pg_dump を卒業するとき" in page_text(site / "index.html")
