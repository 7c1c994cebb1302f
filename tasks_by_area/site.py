"""The runbook site (``pgrunbook.site``). No --env."""

from __future__ import annotations

from pathlib import Path

from pgrunbook.cli import guarded, task
from pgrunbook.core.console import Console
from tasks_by_area.common import ROOT, lazy


@task(help={"port": "プレビューのポート番号（127.0.0.1 でだけ待ち受け）"})
def docs(c, port=8000):
    """手順書サイトをプレビューする（mkdocs serve。編集すると自動で再読み込み）。--env は不要。"""
    console = Console()
    console.step(f"プレビュー: http://127.0.0.1:{port}/（Ctrl-C で終了）")
    guarded(lambda: lazy.site_docs.serve_site(ROOT, int(port)), console)


@task(name="docs-build", help={"output": "出力先ディレクトリ（既定: このチェックアウトの site/）"})
def docs_build(c, output=None):
    """手順書サイトを strict でビルドする。公開は site/ をファイルサーバーへコピーするだけ。--env は不要。"""
    console = Console()
    target = Path(output).resolve() if output else ROOT / "site"
    index = guarded(lambda: lazy.site_docs.build_site(ROOT, target), console)
    console.result(str(index))


TASKS = (docs, docs_build)
