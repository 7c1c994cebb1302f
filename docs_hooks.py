"""mkdocs hooks: the runbook pages' generated parts (see pgrunbook.docs).

Listed under ``hooks:`` in mkdocs.yml. Each build reloads tasks.py (next to
mkdocs.yml) through importlib, so a changed task changes the site; a marker
that cannot be rendered fails the build.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.exceptions import PluginError

from pgrunbook import docs

_content: docs.SiteContent | None = None


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_config(config):
    global _content
    root = _root(config)
    _content = docs.SiteContent(root, lambda: docs.load_namespace(root / "tasks.py"))
    return config


def on_page_markdown(markdown, page, config, files):
    assert _content is not None
    try:
        return _content.expand(markdown)
    except docs.DocsError as error:
        raise PluginError(f"{page.file.src_uri}: {error}") from error


def on_serve(server, config, builder):
    root = _root(config)
    for name in ("tasks.py", ".env.example", "crontab.example", "src/pgrunbook"):
        if (root / name).exists():
            server.watch(str(root / name))
    return server
