"""Answers from the container, framed by a per-call nonce and checked; a lost read asked again.

The Docker Engine can lose the whole output of an exec and still report exit
code 0 (moby#27289, docker-py#2042, docker-py#3332; measured on a loaded host in
runbooks/performance.md). So every short command whose output the kit reads runs
inside a frame: ``sh`` prints a line with a nonce of this call before the
command, and one with the nonce and the command's exit code after it. The
answer is exactly the bytes between the two marks, and only when both arrived;
anything else is a lost answer (``LostAnswer``), never an empty one.

A read whose answer was lost is asked again (``answered``: a few tries with a
short pause), then fails with one line. A statement with side effects is never
asked again: its caller checks its effect with a framed read.

Pure: the frame's shell line, the check of what came back, the retry policy.
``infra/container.py`` runs the frame (``Container.run``, ``exec_framed``).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pgrunbook.core.errors import RunbookError

MARK = "pgrunbook-frame"
# the frame: $1 is the nonce, the rest the command; a command that is not there
# says so in a mark of its own (sh's own 127 would look like the command's)
SCRIPT = (
    'n=$1; shift; printf "' + MARK + ':%s:begin\\n" "$n"; '
    'command -v "$1" >/dev/null 2>&1 || { printf "\\n' + MARK + ':%s:missing\\n" "$n"; exit 127; }; '
    '"$@"; rc=$?; printf "\\n' + MARK + ':%s:end:%d\\n" "$n" "$rc"; exit "$rc"'
)

TRIES = 4  # a read is asked at most this often
PAUSES = (0.1, 0.4, 1.0)  # seconds before the 2nd, 3rd, 4th try

T = TypeVar("T")


class LostAnswer(RunbookError):
    """The answer of a command did not arrive whole: its frame is broken."""

    def __init__(self, message: str, hint: str = "", where: tuple[str, str] = ("", "")) -> None:
        super().__init__(message, hint)
        self.where = where  # (container, command)


@dataclass(frozen=True)
class Unframed:
    """What came back between the marks."""

    complete: bool  # both marks arrived, in their places
    missing: bool = False  # the command is not in the container
    exit_code: int | None = None  # the command's, from the end mark


@dataclass
class Frame:
    """One call's frame. ``feed`` takes the framed stdout as it arrives and passes
    the command's own bytes on (holding back what could be the end mark);
    ``finish`` says whether the answer is whole."""

    deliver: Callable[[bytes], None] = lambda _data: None
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    _head: bytearray = field(default_factory=bytearray)
    _held: bytearray = field(default_factory=bytearray)
    _begun: bool = False
    _broken: bool = False

    @property
    def begin(self) -> bytes:
        return f"{MARK}:{self.nonce}:begin\n".encode()

    @property
    def _end_prefix(self) -> bytes:
        return f"\n{MARK}:{self.nonce}:".encode()

    def argv(self, command: list[str]) -> list[str]:
        """``command`` run by sh between the two marks (its stdin passes through)."""
        return ["sh", "-c", SCRIPT, "sh", self.nonce, *command]

    def feed(self, data: bytes) -> None:
        if self._broken:
            return
        if not self._begun:
            self._head.extend(data)
            if len(self._head) < len(self.begin):
                if not self.begin.startswith(bytes(self._head)):
                    self._broken = True
                return
            if not self._head.startswith(self.begin):
                self._broken = True
                return
            self._begun = True
            data = bytes(self._head[len(self.begin):])
            self._head.clear()
        self._held.extend(data)
        keep = len(self._end_prefix) + len("missing\n")  # the longest tail a mark can have
        if len(self._held) > keep:
            self.deliver(bytes(self._held[:-keep]))
            del self._held[:-keep]

    def finish(self) -> Unframed:
        if self._broken or not self._begun:
            return Unframed(False)
        tail = bytes(self._held)
        found = re.search(re.escape(self._end_prefix) + rb"(?:end:(\d+)|(missing))\n\Z", tail)
        if not found:
            return Unframed(False)
        if found.group(2):
            return Unframed(True, missing=True)
        if found.start():
            self.deliver(tail[: found.start()])
        self._held.clear()
        return Unframed(True, exit_code=int(found.group(1)))


def unframe(frame: Frame, stdout: bytes) -> tuple[bytes, Unframed]:
    """The command's own output out of a whole framed stdout."""
    answer = bytearray()
    frame.deliver = answer.extend
    frame.feed(stdout)
    found = frame.finish()
    return bytes(answer), found


def answered(ask: Callable[[], T], tries: int = TRIES, pause: Callable[[float], None] = time.sleep) -> T:
    """``ask()`` until it is not a LostAnswer: ``tries`` times, pausing in between.
    Only for reads (and statements that may run twice): it runs the command again."""
    for attempt in range(1, tries + 1):
        try:
            return ask()
        except LostAnswer as error:
            if attempt == tries:
                raise (lost_answer(*error.where, tries) if tries > 1 and all(error.where)
                       else error) from None
            pause(PAUSES[min(attempt, len(PAUSES)) - 1])
    raise AssertionError("unreachable")


def lost_answer(container: str, command: str, tries: int = 1) -> LostAnswer:
    times = f"{tries} 回とも" if tries > 1 else "1 回"
    return LostAnswer(
        f"コンテナ {container} の {command} の応答が届きませんでした（{times}。Docker Engine が"
        "出力を落とす既知の不具合で、負荷の高いホストで起きます）",
        "ホストの負荷が下がってから再実行（届かなかった応答を空の結果としては扱っていません）",
        (container, command),
    )
