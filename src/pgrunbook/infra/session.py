"""psql driven step by step: one session that keeps its transaction between steps,
and COPY streams read line by line.

A restore that puts rows back while the app runs needs one transaction in
which it reads (under lock), loads its rows into temporary tables, checks and
writes; ``Session`` is that transaction's psql, fed through the exec's stdin
as the work goes on. Every step ends with a ``SELECT`` of a marker of its own,
so that an answer counts only when its marker follows it: a psql that stopped
(``ON_ERROR_STOP``, the container gone) never passes for an empty result.

``stream_lines`` is one ``COPY (...) TO STDOUT`` of its own (one exec), framed
the same way. Both hand lines over bounded queues: memory stays flat whatever
the size of a table, and a consumer that is slow holds the server back instead
of filling the memory.

Secrets travel in the exec environment only. If the kit's process dies (``kill
-9``), the exec's stdin closes: psql reads the end of its input, exits, and the
server rolls back what the session had not committed.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import open_private
from pgrunbook.infra.container import ExecResult
from pgrunbook.infra.framing import lost_answer
from pgrunbook.infra.postgres import FIELD, RECORD, Postgres, explain_failure

# the server's text of values, the same on every server the kit compares: a row's
# text (and so its md5) depends on these settings, never on a server's defaults
STABLE_TEXT = ("-c DateStyle=ISO,MDY -c IntervalStyle=postgres -c TimeZone=UTC "
               "-c extra_float_digits=1 -c bytea_output=hex")
# the kit's own long reads and its transaction across steps are not the app's queries: no
# statement or idle-in-transaction timeout of the role or the database cuts them (as pg_dump);
# waiting for a lock is bounded by each caller (lock_timeout)
NO_TIMEOUTS = "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0"
QUEUE_CHUNKS = 16  # chunks of lines waiting between a reader and its consumer (memory stays flat)
END = None  # the reader's end


class SessionEnded(RunbookError):
    """psql stopped before the step's marker: the step failed (its error in the message)."""


def _environment(pg: Postgres, application: str, options: str) -> dict[str, str]:
    return {"PGAPPNAME": application, "PGCLIENTENCODING": "UTF8",
            "PGOPTIONS": " ".join(filter(None, [STABLE_TEXT, NO_TIMEOUTS, options]))}


class _Lines:
    """Bytes from an exec's stdout as lines on a bounded queue (a slow consumer
    blocks the reader, and with it the server)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._rest = b""

    def feed(self, data: bytes) -> None:
        data = self._rest + data
        lines = data.split(b"\n")
        self._rest = lines.pop()
        if lines:
            self.queue.put(lines)

    def close(self) -> None:
        if self._rest:
            self.queue.put([self._rest])  # an unterminated last line: never a marker
            self._rest = b""
        self.queue.put(END)


class Session:
    """One psql session in the container (``ON_ERROR_STOP``): its transaction lasts
    from step to step until ``close``. Use as a context manager: leaving it without
    a ``COMMIT`` sent rolls everything back."""

    def __init__(self, pg: Postgres, database: str, application: str = "pgrunbook",
                 options: str = "") -> None:
        self.pg = pg
        self.database = database
        self._input: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._output = _Lines()
        self._marker = f"pgrunbook-{uuid.uuid4().hex}"
        self._count = 0
        self._result: ExecResult | None = None
        self._failure: BaseException | None = None
        self._ended = False
        argv = pg.psql_argv(database) + ["-A", "-t", "-F", FIELD, "-R", RECORD]
        environment = _environment(pg, application, options)
        self._thread = threading.Thread(target=self._run, args=(argv, environment),
                                        name="psql-session", daemon=True)
        self._thread.start()

    def _stdin(self) -> Iterator[bytes]:
        while (chunk := self._input.get()) is not None:
            yield chunk

    def _run(self, argv: list[str], environment: dict[str, str]) -> None:
        try:
            self._result = self.pg.run(argv, stdin=self._stdin(), on_stdout=self._output.feed,
                                       environment=environment)
        except BaseException as error:  # noqa: BLE001 - raised in the caller's thread
            self._failure = error
        finally:
            self._output.close()

    # ---- the steps ---------------------------------------------------------------
    def _send(self, text: str | bytes) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        while not self._ended:
            try:
                self._input.put(data, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():  # psql stopped reading: it has ended
                    break
        self._ended = True
        raise self._error()

    def _mark(self) -> bytes:
        self._count += 1
        marker = f"{self._marker}-{self._count}"
        self._send(f"SELECT '{marker}';\n")
        return marker.encode()

    def _until(self, marker: bytes) -> Iterator[bytes]:
        """The lines before ``marker``; raises when psql ended without it."""
        while True:
            lines = self._output.queue.get()
            if lines is END:
                self._ended = True
                raise self._error()
            for index, line in enumerate(lines):
                if line == marker:
                    rest = lines[index + 1:]
                    if rest:  # nothing may follow a marker before the next step
                        raise RunbookError(f"psql の出力が想定外です: {rest[0][:80]!r}")
                    return
                yield line

    def _error(self) -> RunbookError:
        self._thread.join(timeout=30)
        if self._failure is not None:
            if isinstance(self._failure, RunbookError):
                return self._failure
            return SessionEnded(f"psql のセッションが途切れました: {self._failure}")
        stderr = self._result.stderr if self._result else ""
        error = explain_failure(stderr, self.pg.settings, self.database)
        return SessionEnded(error.message, error.hint)

    def execute(self, sql: str) -> None:
        """Run statements (each ending in ``;``); their output is discarded."""
        self._send(sql.rstrip() + "\n")
        for _line in self._until(self._mark()):
            pass

    def rows(self, sql: str) -> list[list[str]]:
        """One query's rows, fields as text."""
        self._send(sql.rstrip().rstrip(";") + ";\n")
        text = b"\n".join(self._until(self._mark())).decode("utf-8", "replace")
        return [record.split(FIELD) for record in text.split(RECORD) if record != ""]

    def copy_out(self, query: str) -> Iterator[bytes]:
        """``COPY (query) TO STDOUT``: the rows as lines of COPY text, without their
        newline. Read it to its end before the next step."""
        self._send(f"COPY ({query}) TO STDOUT;\n")
        yield from self._until(self._mark())

    def copy_to_file(self, query: str, path: Path) -> int:
        """``copy_out`` into a new private file (0600), a line a row; how many rows."""
        count = 0
        with open_private(path) as handle:
            for line in self.copy_out(query):
                handle.write(line + b"\n")
                count += 1
        return count

    def copy_in(self, table: str, columns: str, lines: Iterable[bytes]) -> None:
        """``COPY table (columns) FROM STDIN`` with ``lines`` (COPY text, each ending
        in a newline, in chunks of any size)."""
        self._send(f"COPY {table} ({columns}) FROM STDIN;\n")
        for chunk in lines:
            if chunk:
                self._send(chunk)
        self._send(b"\\.\n")
        for _line in self._until(self._mark()):
            pass

    def close(self) -> None:
        """End psql (its input ends): a transaction not committed is rolled back."""
        if not self._ended:
            self._ended = True
            while self._thread.is_alive():
                try:
                    self._input.put(None, timeout=0.5)
                    break
                except queue.Full:
                    self._drain()
        while self._thread.is_alive():  # what is left, so that the reader (and psql) can end
            self._drain()
        self._thread.join(timeout=30)

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            self._output.queue.get(timeout=0.5)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_lines(pg: Postgres, database: str, query: str, application: str = "pgrunbook",
                 options: str = "") -> Iterator[bytes]:
    """``COPY (query) TO STDOUT`` in one read-only psql of its own: the lines as they
    come. Complete only when psql's marker follows the last line (else it raises).
    Closing the iterator early stops the reading (the exec is left to end)."""
    marker = f"pgrunbook-{uuid.uuid4().hex}"
    argv = pg.psql_argv(database) + ["-A", "-t", "-c", f"COPY ({query}) TO STDOUT",
                                     "-c", f"SELECT '{marker}'"]
    environment = _environment(pg, application,
                               " ".join(filter(None, ["-c default_transaction_read_only=on", options])))
    output = _Lines()
    outcome: dict[str, object] = {}
    stop = threading.Event()

    def feed(data: bytes) -> None:
        if stop.is_set():
            raise _Stopped
        output.feed(data)

    def run() -> None:
        try:
            outcome["result"] = pg.run(argv, on_stdout=feed, environment=environment)
        except _Stopped:
            outcome["stopped"] = True
        except BaseException as error:  # noqa: BLE001 - raised in the consumer's thread
            outcome["failure"] = error
        finally:
            output.close()

    thread = threading.Thread(target=run, name="copy-out", daemon=True)
    thread.start()
    expected = marker.encode()
    seen = False
    try:
        while (lines := output.queue.get()) is not END:
            for line in lines:
                if seen:
                    raise RunbookError(f"psql の出力が想定外です: {line[:80]!r}")
                if line == expected:
                    seen = True
                    continue
                yield line
        thread.join()
        failure = outcome.get("failure")
        if isinstance(failure, BaseException):
            raise failure
        result = outcome.get("result")
        if not isinstance(result, ExecResult) or not result.ok or not seen:
            stderr = result.stderr if isinstance(result, ExecResult) else ""
            if isinstance(result, ExecResult) and result.ok and not stderr.strip():
                # psql ended well and its marker never came: the engine lost the output
                # (framing.py), never "no more rows"; a caller may read it again (answered)
                raise lost_answer(pg.container.name, "psql (COPY)")
            raise explain_failure(stderr or "COPY が途中で終わりました", pg.settings, database)
    finally:
        if thread.is_alive():
            stop.set()
            while thread.is_alive():  # let the reader see the stop and end
                try:
                    output.queue.get(timeout=0.5)
                except queue.Empty:
                    continue


class _Stopped(Exception):
    """The consumer closed the stream early."""
