"""The parser of the team's runbook (runbooks/original/): sections, code blocks, bodies,
the TOC ids of repeated headings, and what the coverage check names."""

from __future__ import annotations

import pytest

from helpers import ROOT
from pgrunbook.site import docs, original

pytest.importorskip("markdown_it")

KEPT = ROOT / original.ORIGINAL_RUNBOOK


@pytest.fixture(scope="module")
def runbook() -> original.Runbook:
    return original.Runbook.load(KEPT)

SAMPLE = """# 題

## 手順

### 1. 作る

説明の行。

```bash
# コメント
make db
```

1. **戻す**

    ~~~sh
    restore db
    ~~~

---

### 2. 消す

````bash
echo '```'
````

## 付記
"""


def test_parser_finds_sections_blocks_and_bodies():
    runbook = original.Runbook.parse(SAMPLE, lambda text, sep: text.replace(" ", sep))
    assert runbook.title == "題"
    assert [s.path for s in runbook.sections] == [("手順",), ("手順", "1. 作る"), ("手順", "2. 消す"), ("付記",)]
    blocks = runbook.code_blocks
    assert [b.content for b in blocks] == ["# コメント\nmake db\n", "restore db\n", "echo '```'\n"]
    assert blocks[0].command_lines() == ["make db"] and blocks[1].heading == ("手順", "1. 作る")
    make = runbook.section(("手順", "1. 作る"))
    assert [b.index for b in make.code_blocks] == [0, 1]
    body = runbook.body(make)
    assert body.startswith("説明の行。") and body.endswith("    ~~~")  # the rule before 2. is left out
    assert make.anchor == "1.-作る"
    with pytest.raises(original.OriginalError, match="3. 直す"):
        runbook.section(("手順", "3. 直す"))


def test_repeated_headings_get_the_toc_ids():
    runbook = original.Runbook.parse("# T\n\n## A\n\n### 目的\n\n## B\n\n### 目的\n", lambda text, sep: text)
    assert [s.anchor for s in runbook.sections] == ["A", "目的", "B", "目的_1"]


def test_coverage_names_what_is_left_out():
    runbook = original.Runbook.parse(SAMPLE)
    coverage = original.Coverage(runbook)
    coverage.record(runbook.section(("手順", "1. 作る")), "a.md")
    assert [b.index for b in coverage.missing()] == [2]
    with pytest.raises(original.OriginalError, match="2. 消す"):
        coverage.check()
    coverage.record(runbook.section(("手順", "2. 消す")), "b.md")
    coverage.check()


def test_unknown_section_key_fails():
    content = docs.SiteContent(ROOT, lambda: None)
    with pytest.raises(docs.DocsError, match="no-such"):
        content.expand("<!-- pgrunbook:original no-such -->", "backup.md")
    expanded = content.expand("<!-- pgrunbook:original cron -->", "reference/tasks.md")
    assert "(../original.md)" in expanded and "0 2 * * *" in expanded
