"""Kill points for the tests' ``kill -9`` matrix.

A test sets ``PGRUNBOOK_TEST_KILL_AT=<stage>``; when the run reaches that
stage, the process sends itself SIGKILL (after ``delay`` seconds, on a timer,
for a stage that is one long call: the kill then lands inside it). Nothing
runs after a SIGKILL, no ``finally`` and no cleanup: exactly what an operator's
``kill -9``, an OOM kill or a power cut does. ``PGRUNBOOK_TEST_KILL_SIGNAL=TERM``
(or INT, HUP) sends that signal instead: Ctrl-C, cron or a shutdown at that
stage. Unset, this costs one lookup.

The engine's lost outputs (an exec whose output never arrives) have a seam of
their own where they happen, in infra/container.py (``PGRUNBOOK_TEST_DROP_*``).
"""

from __future__ import annotations

import os
import signal
import threading

VARIABLE = "PGRUNBOOK_TEST_KILL_AT"
SIGNAL = "PGRUNBOOK_TEST_KILL_SIGNAL"


def kill_point(stage: str, delay: float = 0.0) -> None:
    if os.environ.get(VARIABLE) != stage:
        return
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
