"""container.py against the real engine: exec streams, exit codes, archives."""

from __future__ import annotations

import threading
from itertools import repeat

import pytest

from pgrunbook.infra.container import Container


def test_exec_returns_stdout_stderr_and_the_real_exit_code(pg):
    container = Container(pg.client, pg.container)
    result = container.exec(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.exit_code, result.stdout, result.stderr.strip()) == (7, b"out\n", "err")


def test_exec_streams_stdin_and_stops_feeding_a_process_that_quit(pg):
    container = Container(pg.client, pg.container)
    echoed = container.exec(["cat"], stdin=iter([b"knot ", "会計".encode()]))
    assert echoed.ok and echoed.stdout == "knot 会計".encode()
    # an endless input to a process that reads 10 bytes and exits (like pg_restore
    # --list, which stops after the TOC): exec must return and leave no writer behind
    endless = repeat(b"x" * (1 << 20))
    result = container.exec(["sh", "-c", "head -c 10 >/dev/null; exit 0"], stdin=endless)
    assert result.ok
    assert not [t for t in threading.enumerate() if t.name == "exec-stdin" and t.is_alive()]


def test_archives_in_and_out(pg, tmp_path):
    container = Container(pg.client, pg.container)
    source = tmp_path / "in.bin"
    source.write_bytes(bytes(range(256)) * 5000)
    inside = container.put_file(source, "/tmp", "pgrunbook-archive-test.bin")
    copied = tmp_path / "out.bin"
    assert container.get_file(inside, copied) == source.stat().st_size
    assert copied.read_bytes() == source.read_bytes()
    container.exec(["rm", "-f", inside])


def test_a_command_missing_in_the_container_is_a_setup_error_not_a_failed_command(pg):
    from pgrunbook.core.errors import RunbookError

    container = Container(pg.client, pg.container)
    with pytest.raises(RunbookError) as raised:
        container.run(["pg_restore_not_installed", "--list"])
    assert "pg_restore_not_installed" in raised.value.message
    assert "DB_CONTAINER" in raised.value.hint
    assert container.run(["sh", "-c", "exit 127"]).exit_code == 127  # a command's own 127 stays a result
