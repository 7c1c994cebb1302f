"""mkdocs hooks: the runbook pages' generated parts (see pgrunbook.docs).

Listed under ``hooks:`` in mkdocs.yml. Each build reloads tasks.py (next to
mkdocs.yml) through importlib, so a changed task changes the site; a marker
that cannot be rendered fails the build, and so does a code block of the
team's own runbook (runbooks/original/) that no step page embeds.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.exceptions import PluginError

from pgrunbook.site import docs

_content: docs.SiteContent | None = None


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_config(config):
    global _content
    root = _root(config)
    slugify = config.mdx_configs.get("toc", {}).get("slugify")  # to link to the original's headings
    _content = docs.SiteContent(root, lambda: docs.load_namespace(root / "tasks.py"), slugify)
    return config


def on_page_markdown(markdown, page, config, files):
    assert _content is not None
    try:
        return _content.expand(markdown, page.file.src_uri)
    except docs.DocsError as error:
        raise PluginError(f"{page.file.src_uri}: {error}") from error


def on_env(env, config, files):
    """After every page's Markdown: each code block of the team's runbook is on a step page."""
    assert _content is not None
    try:
        _content.check_original_coverage()
    except docs.DocsError as error:
        raise PluginError(str(error)) from error
    return env


def on_serve(server, config, builder):
    root = _root(config)
    for name in ("tasks.py", "tasks_by_area", ".env.example", "crontab.example", "src/pgrunbook"):
        if (root / name).exists():
            server.watch(str(root / name))
    return server
