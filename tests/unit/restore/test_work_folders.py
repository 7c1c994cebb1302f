"""restore-partial's work folders: whose run is still going (pure, this host's processes)."""

from __future__ import annotations

import os
import socket

from pgrunbook.core import journal
from pgrunbook.restore.partial import _running


def test_a_work_folder_written_without_proc_is_kept_while_its_run_goes_on():
    """restore-partial removes the work folders of runs whose process is gone; one named
    where /proc could not tell the process's start is judged by its pid, not removed."""
    host = socket.gethostname()
    assert _running(f".work-{host}-{os.getpid()}-None-ab12_x")
    assert _running(f".work-{host}-{os.getpid()}-{journal.process_started(os.getpid())}-ab12_x")
    assert not _running(f".work-{host}-{os.getpid()}-1-ab12_x")
