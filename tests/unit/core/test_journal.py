"""journal.running: is a run's process still going (pure, this host's processes)."""

from __future__ import annotations

import os
import subprocess
import sys

from pgrunbook.core import journal


def test_a_process_is_running_by_its_start_and_where_proc_cannot_tell_by_its_pid():
    me = os.getpid()
    assert journal.running(me, journal.process_started(me))
    assert not journal.running(me, "1")  # the pid reused by another process
    # no /proc where the run wrote its name (macOS): "None", the pid alone decides
    assert journal.running(me, "None") and journal.running(me, None)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not journal.running(gone.pid, "None")

