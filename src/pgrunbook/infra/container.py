"""The Docker SDK in one place: find the container, exec with streams, archives.

Every call goes through the Engine API (no ``docker`` CLI): exec with streamed
stdout/stderr (and optionally stdin) and the real exit code from
``exec_inspect``; files in and out as tar archives, streamed both ways so that
memory stays flat whatever the size. A short command whose output the kit reads
runs framed (``run``, ``exec_framed``; see framing.py): its whole answer or
LostAnswer, never an empty answer for a lost one.

The tests' fault seam (no-op unless a test sets it, like core/faults.py): the
engine can lose an exec's whole output and still say exit code 0 (moby#27289).
``PGRUNBOOK_TEST_DROP_OUTPUT=<p>`` drops the output of an exec with probability
p (``1``: every exec), after the command really ran, its exit code kept:
* ``PGRUNBOOK_TEST_DROP_MATCH=<regex>``: only execs whose command line (argv
  joined by spaces, the SQL of a psql included) matches;
* ``PGRUNBOOK_TEST_DROP_NTH=2,5``: exactly the 2nd and 5th matching exec of the
  process (then p is not needed);
* ``PGRUNBOOK_TEST_DROP_KIND``: ``all`` (stdout and stderr, the default),
  ``head:<bytes>`` or ``tail:<bytes>`` (that much of the start or end of stdout),
  ``after:<bytes>`` (all of stdout after its first bytes: a session's end),
  ``unfinished`` (nothing arrives and the exit code is unknown, -1: the engine ended
  the stream while the process still ran);
* ``PGRUNBOOK_TEST_DROP_SEED``: the random choice repeatable;
* ``PGRUNBOOK_TEST_DROP_LOG=<file>``: a line per dropped exec (what a test observes).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import re
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.utils.socket import frames_iter

from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import CHUNK
from pgrunbook.infra.framing import TRIES, Frame, answered, lost_answer

STDERR_KEEP = 64 * 1024


class MissingCommand(RunbookError):
    """The command is not in the container (not installed, not executable)."""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: str
    complete: bool = True  # False: a framed command's answer was lost (framing.py)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def error_text(self) -> str:
        """The line that names the error (PostgreSQL tools print context lines after it)."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        for line in lines:
            if re.search(r"\b(ERROR|FATAL|error|fatal):", line):
                return line
        return lines[-1] if lines else f"exit code {self.exit_code}"


_clients: dict[str, docker.DockerClient] = {}


def engine() -> docker.DockerClient:
    """A connected client, or one clear message when there is no engine.

    One per process and DOCKER_HOST: a task resolves its container (discovery)
    and then works with it; a second client would cost ~20 ms. Making the client
    asks the engine its API version (GET /version): that answer is the ping."""
    where = os.environ.get("DOCKER_HOST", "")
    if where in _clients:
        return _clients[where]
    try:
        client = docker.from_env(timeout=600)
    except DockerException as error:
        raise RunbookError(
            "Docker Engine に接続できません",
            "Docker が起動しているか（systemctl status docker / docker version）、"
            "このユーザーが docker グループにいるかを確認",
        ) from error
    _clients[where] = client
    return client


class Container:
    """A running container, reached through the Engine API only."""

    def __init__(self, client: docker.DockerClient, model) -> None:
        self.client = client
        self.model = model
        self.name: str = model.name
        self.api = client.api
        self._info: dict | None = None

    def engine_info(self) -> dict:
        """The engine's ``docker info`` (asked once)."""
        if self._info is None:
            self._info = self.client.info()
        return self._info

    @classmethod
    def find(cls, name: str, client: docker.DockerClient | None = None) -> Container:
        client = client or engine()
        try:
            model = client.containers.get(name)
        except NotFound:
            running = sorted(c.name for c in client.containers.list())
            listing = ", ".join(running) if running else "（稼働中のコンテナはありません）"
            raise RunbookError(
                f"コンテナ {name!r} が見つかりません",
                f"DB_CONTAINER を確認。稼働中のコンテナ: {listing}",
            ) from None
        except APIError as error:
            raise RunbookError(f"コンテナ {name!r} を調べられません: {error.explanation}") from error
        if model.status != "running":
            raise RunbookError(
                f"コンテナ {name!r} は停止しています（状態: {model.status}）",
                f"docker start {name} で起動してから再実行",
            )
        return cls(client, model)

    def engine_description(self) -> str:
        """Which Docker Engine this is: a DOCKER_HOST left in a shell must show."""
        where = os.environ.get("DOCKER_HOST") or "ローカル（/var/run/docker.sock）"
        try:
            name = self.engine_info().get("Name", "")
        except Exception:  # noqa: BLE001 - only a description
            name = ""
        return f"{where}{f'（ホスト {name}）' if name else ''}"

    def host_address(self, port: int = 5432) -> str | None:
        """Where the Docker host reaches the container's ``port``: ``localhost:<port>``
        on the host's network, else the address ``<port>/tcp`` is published on; None
        when it is not published (only docker exec reaches it). From the Engine API."""
        if (self.model.attrs.get("HostConfig") or {}).get("NetworkMode") == "host":
            return f"localhost:{port}"
        ports = (self.model.attrs.get("NetworkSettings") or {}).get("Ports") or {}
        for binding in ports.get(f"{port}/tcp") or []:
            address, published = binding.get("HostIp") or "", binding.get("HostPort")
            if not published:
                continue
            if address in ("", "0.0.0.0", "::", "127.0.0.1", "::1"):
                address = "localhost"
            elif ":" in address:
                address = f"[{address}]"
            return f"{address}:{published}"
        return None

    def exec_owner(self) -> tuple[int, int]:
        """uid and gid of the container's exec user: files put into the container
        belong to it, so that its pg_restore can read them and its rm remove them."""
        user = (self.model.attrs.get("Config") or {}).get("User") or ""
        if user in ("", "root", "0", "0:0"):
            return 0, 0
        ids = self.run(["id", "-u"]), self.run(["id", "-g"])
        try:
            return int(ids[0].stdout), int(ids[1].stdout)
        except ValueError:
            return 0, 0

    def cpu_count(self) -> int:
        """The CPUs the container may use: its cpuset, --cpus or CPU quota, else the
        engine's. From the Engine API, not an exec (no process in the container)."""
        host = self.model.attrs.get("HostConfig") or {}
        limits = []
        if host.get("NanoCpus"):
            limits.append(math.ceil(host["NanoCpus"] / 1e9))
        if (host.get("CpuQuota") or 0) > 0:
            limits.append(math.ceil(host["CpuQuota"] / (host.get("CpuPeriod") or 100_000)))
        if host.get("CpusetCpus"):
            limits.append(cpuset_size(host["CpusetCpus"]))
        if not limits:
            with contextlib.suppress(Exception):
                limits.append(int(self.engine_info().get("NCPU") or 1))
        return max(1, min(limits, default=1))

    # ---- exec -----------------------------------------------------------------
    def exec(
        self,
        argv: list[str],
        *,
        environment: dict[str, str] | None = None,
        stdin: Iterable[bytes] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        user: str = "",
    ) -> ExecResult:
        """Run argv in the container; stream stdout to on_stdout (else collect it).

        Secrets go in ``environment``, never in argv. The exit code is the real
        one from exec_inspect. The output is not framed: a stream (pg_dump into a
        file) is checked by what reads it; a short answer goes through ``run``.
        """
        return self._exec(argv, argv, environment, stdin, on_stdout, user)

    def exec_framed(
        self,
        argv: list[str],
        *,
        environment: dict[str, str] | None = None,
        stdin: Iterable[bytes] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        user: str = "",
    ) -> ExecResult:
        """``exec`` inside a frame (framing.py): on_stdout (or the result) gets the
        command's own output; ``complete`` is False when the answer was lost (the
        exit code is still the real one). Asked once: ``run`` retries reads."""
        collected = bytearray()
        frame = Frame(on_stdout or collected.extend)
        result = self._exec(frame.argv(argv), argv, environment, stdin, frame.feed, user)
        found = frame.finish()
        if found.missing:
            raise self._missing(argv, "コマンドがありません")
        exit_code = result.exit_code
        if exit_code < 0 and found.exit_code is not None:
            exit_code = found.exit_code  # exec_inspect gave up waiting: the frame knows
        return ExecResult(exit_code, bytes(collected), result.stderr, found.complete)

    def _missing(self, argv: list[str], detail: str) -> MissingCommand:
        return MissingCommand(
            f"コンテナ {self.name} で {argv[0]} を実行できません: {detail}",
            "PostgreSQL のクライアントツール（pg_dump, pg_restore, psql）が入った DB のコンテナを "
            "DB_CONTAINER に指定",
        )

    def _exec(
        self,
        argv: list[str],
        shown: list[str],
        environment: dict[str, str] | None,
        stdin: Iterable[bytes] | None,
        on_stdout: Callable[[bytes], None] | None,
        user: str,
    ) -> ExecResult:
        try:
            exec_id = self.api.exec_create(
                self.model.id,
                argv,
                stdout=True,
                stderr=True,
                stdin=stdin is not None,
                tty=False,
                environment=environment or None,
                user=user,
            )["Id"]
        except APIError as error:
            raise self._exec_error(error) from error
        collected = bytearray()
        stderr_tail = bytearray()
        head = bytearray()  # the runtime's own complaint arrives on stdout

        def deliver_stdout(data: bytes) -> None:
            if len(head) < 512:
                head.extend(data[: 512 - len(head)])
            if on_stdout is None:
                collected.extend(data)
            else:
                on_stdout(data)

        def deliver_stderr(data: bytes) -> None:
            stderr_tail.extend(data)
            if len(stderr_tail) > STDERR_KEEP:
                del stderr_tail[: len(stderr_tail) - STDERR_KEEP]

        dropping = drop_seam().choose(shown)
        if dropping is not None:  # the tests' lost output (module docstring)
            deliver_stdout, deliver_stderr = dropping.wrap(deliver_stdout, deliver_stderr)

        if stdin is None:
            stream = self.api.exec_start(exec_id, stream=True, demux=True)
            for out, err in stream:
                if out:
                    deliver_stdout(out)
                if err:
                    deliver_stderr(err)
        else:
            self._exec_with_stdin(exec_id, stdin, deliver_stdout, deliver_stderr)
        exit_code = self._exit_code(exec_id)
        if dropping is not None:
            dropping.finish()
            if dropping.kind == "unfinished":
                exit_code = -1  # as _exit_code says of a process still running when its stream ended
        if exit_code in (126, 127) and head.startswith(b"OCI runtime exec failed"):
            # not the command's failure: it never ran (not installed, not executable)
            raise self._missing(argv, head.decode("utf-8", "replace").strip())
        return ExecResult(exit_code, bytes(collected), stderr_tail.decode("utf-8", "replace"))

    def start_detached(self, argv: list[str], environment: dict[str, str] | None = None) -> None:
        """Start a command that goes on without us (best effort, no result)."""
        try:
            exec_id = self.api.exec_create(self.model.id, argv, environment=environment or None)["Id"]
            self.api.exec_start(exec_id, detach=True)
        except APIError as error:
            raise self._exec_error(error) from error

    def _exec_with_stdin(
        self,
        exec_id: str,
        stdin: Iterable[bytes],
        deliver_stdout: Callable[[bytes], None],
        deliver_stderr: Callable[[bytes], None],
    ) -> None:
        sock = self.api.exec_start(exec_id, socket=True)
        raw = getattr(sock, "_sock", sock)
        writer_error: list[BaseException] = []
        stop = threading.Event()

        def write_all() -> None:
            try:
                for chunk in stdin:
                    if stop.is_set():
                        break
                    raw.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass  # the process ended early (e.g. pg_restore --list): not our failure
            except BaseException as error:  # noqa: BLE001 - reported after the join
                writer_error.append(error)
            finally:
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write_all, name="exec-stdin", daemon=True)
        writer.start()
        try:
            for stream_id, data in frames_iter(sock, tty=False):
                if stream_id == 1:
                    deliver_stdout(data)
                elif stream_id == 2:
                    deliver_stderr(data)
        finally:
            # The process may end before reading all its input (pg_restore --list
            # stops after the TOC). shutdown() wakes a writer blocked in sendall;
            # close() alone would leave it hanging until the engine drops the
            # connection.
            stop.set()
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
            # the process has ended: a writer still inside its source (a generator
            # waiting for something) is a daemon thread and is left behind
            writer.join(timeout=2)
            with contextlib.suppress(OSError):
                raw.close()
            sock.close()
        if writer_error:
            raise writer_error[0]

    def _exit_code(self, exec_id: str) -> int:
        for _ in range(200):
            info = self.api.exec_inspect(exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            time.sleep(0.05)
        return -1

    def _exec_error(self, error: APIError) -> RunbookError:
        self.model.reload()
        if self.model.status != "running":
            return RunbookError(
                f"コンテナ {self.name!r} が停止しました（状態: {self.model.status}）",
                f"docker start {self.name} で起動してから再実行",
            )
        return RunbookError(f"コンテナ {self.name!r} でコマンドを実行できません: {error.explanation}")

    def run(self, argv: list[str], environment: dict[str, str] | None = None, *,
            retry: bool = True) -> ExecResult:
        """Run a short command, framed, and collect its whole output: a lost answer
        is asked again (``retry``: the command runs again, so only for reads and
        commands that may run twice), then LostAnswer. Never an empty answer for a
        lost one; the exit code is the command's."""

        def ask() -> ExecResult:
            result = self.exec_framed(argv, environment=environment)
            if not result.complete:
                raise lost_answer(self.name, argv[0])
            return result

        return answered(ask, TRIES if retry else 1)

    # ---- archives ---------------------------------------------------------------
    def put_file(
        self,
        source: Path,
        directory: str,
        name: str,
        mode: int = 0o600,
        chunks: Iterable[bytes] | None = None,
    ) -> str:
        """Copy a host file into the container as one streamed tar (flat memory).

        ``name`` may be ``subdirectory/file``: the subdirectory is created by the
        same archive with mode 0700 (no mkdir exec). ``chunks`` may supply the
        file's bytes (e.g. hashed on the way)."""
        size = source.stat().st_size
        now = int(time.time())
        uid, gid = self.exec_owner()
        headers = b""
        parent = os.path.dirname(name)
        if parent:
            folder = tarfile.TarInfo(parent)
            folder.type = tarfile.DIRTYPE
            folder.mode = 0o700
            folder.mtime, folder.uid, folder.gid = now, uid, gid
            headers += folder.tobuf(format=tarfile.PAX_FORMAT)
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = mode
        info.mtime, info.uid, info.gid = now, uid, gid
        headers += info.tobuf(format=tarfile.PAX_FORMAT)

        def tar_stream() -> Iterator[bytes]:
            yield headers
            if chunks is not None:
                yield from chunks
            else:
                with open(source, "rb") as handle:
                    while chunk := handle.read(CHUNK):
                        yield chunk
            padding = (-size) % tarfile.BLOCKSIZE
            yield b"\0" * (padding + 2 * tarfile.BLOCKSIZE)

        try:
            self.api.put_archive(self.model.id, directory, tar_stream())
        except APIError as error:
            raise RunbookError(
                f"{source.name} をコンテナ {self.name} の {directory} に置けません: "
                f"{error.explanation}",
                "コンテナのディスク容量と権限を確認",
            ) from error
        return f"{directory.rstrip('/')}/{name}"

    def get_file(self, path: str, target: Path) -> int:
        """Copy one file out of the container, streamed; returns its size."""
        try:
            chunks, _stat = self.api.get_archive(self.model.id, path, chunk_size=CHUNK)
        except NotFound:
            raise RunbookError(f"コンテナ内に {path} がありません") from None
        reader = _IterableReader(chunks)
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                source = archive.extractfile(member)
                assert source is not None
                written = 0
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    while chunk := source.read(CHUNK):
                        handle.write(chunk)
                        written += len(chunk)
                return written
        raise RunbookError(f"コンテナ内の {path} は通常のファイルではありません")


def cpuset_size(cpuset: str) -> int:
    """How many CPUs a cpuset like ``0-3,6`` names."""
    count = 0
    for part in cpuset.split(","):
        low, _, high = part.strip().partition("-")
        if low.isdigit():
            count += int(high) - int(low) + 1 if high.isdigit() else 1
    return max(1, count)


class _IterableReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


# ---- the tests' fault seam (module docstring) ---------------------------------------------

DROP_OUTPUT = "PGRUNBOOK_TEST_DROP_OUTPUT"
DROP_MATCH = "PGRUNBOOK_TEST_DROP_MATCH"
DROP_NTH = "PGRUNBOOK_TEST_DROP_NTH"
DROP_KIND = "PGRUNBOOK_TEST_DROP_KIND"
DROP_SEED = "PGRUNBOOK_TEST_DROP_SEED"
DROP_LOG = "PGRUNBOOK_TEST_DROP_LOG"
DROP_VARIABLES = (DROP_OUTPUT, DROP_MATCH, DROP_NTH, DROP_KIND, DROP_SEED, DROP_LOG)


class _Dropping:
    """One exec's lost output: all of it, or the head or tail of stdout."""

    def __init__(self, kind: str, size: int) -> None:
        self.kind, self.size = kind, size
        self._seen = 0
        self._held = bytearray()
        self._deliver: Callable[[bytes], None] = lambda _data: None

    def wrap(self, stdout: Callable[[bytes], None], stderr: Callable[[bytes], None]
             ) -> tuple[Callable[[bytes], None], Callable[[bytes], None]]:
        """``all`` and ``unfinished`` (the engine ended the stream while the process still
        ran: nothing arrives and no exit code is known, -1) lose stdout and stderr."""
        self._deliver = stdout
        if self.kind == "head":
            return self._head, stderr
        if self.kind == "tail":
            return self._tail, stderr
        if self.kind == "after":
            return self._after, stderr
        return (lambda _data: None), (lambda _data: None)

    def _head(self, data: bytes) -> None:
        skip = max(0, min(len(data), self.size - self._seen))
        self._seen += len(data)
        if data[skip:]:
            self._deliver(data[skip:])

    def _after(self, data: bytes) -> None:
        keep = max(0, min(len(data), self.size - self._seen))
        self._seen += len(data)
        if keep:
            self._deliver(data[:keep])

    def _tail(self, data: bytes) -> None:
        self._held.extend(data)
        if len(self._held) > self.size:
            self._deliver(bytes(self._held[: len(self._held) - self.size]))
            del self._held[: len(self._held) - self.size]

    def finish(self) -> None:
        self._held.clear()  # the tail never arrives


class DropSeam:
    """Which execs lose their output (``PGRUNBOOK_TEST_DROP_*``); inactive when unset."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.rate = float(environ.get(DROP_OUTPUT) or 0)
        self.match = re.compile(environ[DROP_MATCH]) if environ.get(DROP_MATCH) else None
        self.nth = {int(n) for n in (environ.get(DROP_NTH) or "").split(",") if n.strip().isdigit()}
        kind, _, size = (environ.get(DROP_KIND) or "all").partition(":")
        self.kind, self.size = kind, int(size or 0)
        self.random = random.Random(environ.get(DROP_SEED) or None)
        self.log = environ.get(DROP_LOG) or ""
        self.active = self.rate > 0 or bool(self.nth)
        self.seen = 0
        self.lock = threading.Lock()

    def choose(self, argv: list[str]) -> _Dropping | None:
        if not self.active:
            return None
        line = " ".join(argv).replace("\n", " ")
        if self.match and not self.match.search(line):
            return None
        with self.lock:
            self.seen += 1
            number = self.seen
            drop = number in self.nth if self.nth else self.random.random() < self.rate
            if drop and self.log:
                with open(self.log, "a", encoding="utf-8") as handle:
                    shown = re.sub(r"[\x00-\x1f\x7f]", lambda c: f"\\x{ord(c.group()):02x}", line[:300])
                    handle.write(f"{os.getpid()}\t{number}\t{self.kind}\t{shown}\n")
        return _Dropping(self.kind, self.size) if drop else None


_seam: tuple[tuple[str | None, ...], DropSeam] | None = None


def drop_seam() -> DropSeam:
    """The seam as the environment sets it now (read again only when it changed)."""
    global _seam
    key = tuple(os.environ.get(name) for name in DROP_VARIABLES)
    if _seam is None or _seam[0] != key:
        _seam = (key, DropSeam({name: value for name, value in zip(DROP_VARIABLES, key, strict=True)
                                if value is not None}))
    return _seam[1]
