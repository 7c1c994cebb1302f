"""The README as a new user reads it: its first block run as written, and no bullet twice."""

from __future__ import annotations

import re
import stat
import subprocess
from collections import Counter

from helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def first_block() -> str:
    found = re.search(r"```bash\n(.*?)```", README, re.DOTALL)
    assert found, "README has no bash block"
    return found[1]


def test_the_first_block_writes_env_dev_for_its_owner_only(tmp_path):
    """invoke check warns about a .env.* that others can read: the first block must not make one."""
    block = first_block().replace("\\\n", " ")
    writes = re.findall(r"\{[^{}]*>\s*\.env\.dev[^{}]*\}", block)
    assert len(writes) == 1, block
    subprocess.run(["bash", "-c", f"umask 022; {writes[0]}"], cwd=tmp_path, check=True)
    written = tmp_path / ".env.dev"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert written.read_text() == "DB_CONTAINER=knot-sandbox\n"
    # an existing .env.dev is left as it is
    written.write_text("DB_CONTAINER=mine\n")
    subprocess.run(["bash", "-c", writes[0]], cwd=tmp_path, check=True)
    assert written.read_text() == "DB_CONTAINER=mine\n"


def test_no_bullet_appears_twice():
    # the same bullet, give or take its final 。 (the notify.py and schedule.py bullets were twice)
    bullets = [line.strip().rstrip("。. ") for line in README.splitlines()
               if line.lstrip().startswith(("- ", "* "))]
    twice = [line for line, count in Counter(bullets).items() if count > 1]
    assert not twice, twice
