"""The version of a PostgreSQL tool as the operator reads it in a message."""

from __future__ import annotations

import shutil

import pytest

from pgrunbook.backup.verify import _Tools
from pgrunbook.core.console import Console
from pgrunbook.core.settings import load_settings
from pgrunbook.infra.postgres import tool_version_of


def test_a_debian_version_line_gives_the_version_alone():
    assert tool_version_of("pg_restore (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n") == "15.18"
    assert tool_version_of("pg_dump (PostgreSQL) 18.1\n") == "18.1"


@pytest.mark.skipif(shutil.which("pg_restore") is None, reason="no pg_restore on this host")
def test_the_hosts_pg_restore_names_its_version(tmp_path):
    """It was the last word of the line: '15.18-0+deb12u1)' in the message of a too-new archive."""
    (tmp_path / ".env.prod").write_text("DB_CONTAINER=knot-db\n")
    tools = _Tools(load_settings("prod", tmp_path), Console(), host_first=True)
    assert tools.pg_restore_version().replace(".", "").isdigit()
