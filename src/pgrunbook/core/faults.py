"""Kill points for the tests' ``kill -9`` matrix.

A test sets ``PGRUNBOOK_TEST_KILL_AT=<stage>``; when the run reaches that
stage, the process sends itself SIGKILL (after ``delay`` seconds, on a timer,
for a stage that is one long call: the kill then lands inside it). Nothing
runs after a SIGKILL, no ``finally`` and no cleanup: exactly what an operator's
``kill -9``, an OOM kill or a power cut does. ``PGRUNBOOK_TEST_KILL_SIGNAL=TERM``
(or INT, HUP) sends that signal instead: Ctrl-C, cron or a shutdown at that
stage. A stage reached more than once (each app started again) signals the
first time only, or ``PGRUNBOOK_TEST_KILL_TIMES`` times. Unset, this costs one lookup.

``PGRUNBOOK_TEST_PAUSE_AT=<stage>`` with ``PGRUNBOOK_TEST_PAUSE_FILE=<path>``
holds the run at that stage instead: it creates ``<path>.reached`` and goes on
once the test has created ``<path>.go`` (a test can then set up what the next
step meets, e.g. a session or an autovacuum worker, and wait on conditions
instead of on time).

The engine's lost outputs (an exec whose output never arrives) have a seam of
their own where they happen, in infra/container.py (``PGRUNBOOK_TEST_DROP_*``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

VARIABLE = "PGRUNBOOK_TEST_KILL_AT"
SIGNAL = "PGRUNBOOK_TEST_KILL_SIGNAL"
TIMES = "PGRUNBOOK_TEST_KILL_TIMES"  # how often a stage reached again and again signals (default once)
_fired: dict[str, int] = {}


def kill_point(stage: str, delay: float = 0.0) -> None:
    if os.environ.get(VARIABLE) != stage:
        return
    times = os.environ.get(TIMES, "")
    if _fired.get(stage, 0) >= (int(times) if times.isdigit() else 1):
        return
    _fired[stage] = _fired.get(stage, 0) + 1
    number = getattr(signal, "SIG" + (os.environ.get(SIGNAL) or "KILL").upper())
    if delay:
        threading.Timer(delay, os.kill, (os.getpid(), number)).start()
    else:
        os.kill(os.getpid(), number)


REOPEN_TRIES = "PGRUNBOOK_TEST_REOPEN_TRIES"


def reopen_tries(default: int = 20) -> int:
    """How often the swap script tries to reopen a live DB it closed (about 6 s
    each). Tests that hold the DB's catalog row on purpose lower it."""
    value = os.environ.get(REOPEN_TRIES, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


PAUSE = "PGRUNBOOK_TEST_PAUSE_AT"
PAUSE_FILE = "PGRUNBOOK_TEST_PAUSE_FILE"


def pause_point(stage: str, limit: float = 600) -> None:
    if os.environ.get(PAUSE) != stage or not os.environ.get(PAUSE_FILE):
        return
    base = os.environ[PAUSE_FILE]
    Path(base + ".reached").touch()
    deadline = time.monotonic() + limit
    while not Path(base + ".go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


AFTER_CLOSE = "PGRUNBOOK_TEST_AFTER_CLOSE"


def after_close() -> str:
    """A shell command the swap script runs inside the container right after it has
    closed the live database (what the tests make appear then, e.g. a prepared
    transaction). Empty unless a test sets it."""
    return os.environ.get(AFTER_CLOSE, "")
