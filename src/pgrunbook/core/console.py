"""Operator output: progress on a terminal, one summary line under cron.

stdout carries results only (the last line of a backup is its path); every
message goes to stderr. Known secrets are masked in everything printed: in
every spelling a URL gives them (percent-encoded, ``+`` for a space), and as a
whole word only, so that a short password such as ``app`` never mangles the
names that contain it (``app_pgrunbook_previous_…``).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable

# characters of an identifier (SQL names, which the kit lets contain $ and -, container
# and file names): a secret is never masked inside a longer run of them
IDENTIFIER_CHARACTER = "A-Za-z0-9_$-"


def _character_forms(character: str) -> str:
    """A regex for one character of a secret: itself, or its percent-encoding in
    either case (``%2F``, ``%2f``), or ``+`` for a space (application/x-www-form-urlencoded)."""
    encoded = "".join(
        "%" + "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02X}")
        for byte in character.encode("utf-8")
    )
    forms = [re.escape(character), encoded] + ([r"\+"] if character == " " else [])
    return "(?:" + "|".join(forms) + ")"


def secret_pattern(secret: str) -> re.Pattern[str]:
    """Every way a secret shows in text, as a whole word where it begins or ends
    with an identifier character."""
    body = "".join(_character_forms(character) for character in secret)
    word = re.compile(f"[{IDENTIFIER_CHARACTER}]")
    before = f"(?<![{IDENTIFIER_CHARACTER}])" if word.match(secret[0]) else ""
    after = f"(?![{IDENTIFIER_CHARACTER}])" if word.match(secret[-1]) else ""
    return re.compile(before + body + after)


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


class Console:
    def __init__(self, secrets: Iterable[str | None] = (), interactive: bool | None = None) -> None:
        self.secrets: list[str] = []
        self._patterns: list[re.Pattern[str]] = []
        for secret in secrets:
            self.add_secret(secret)
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        # PGRUNBOOK_VERBOSE=1 shows the steps without a terminal (tests, debugging)
        self.verbose = self.interactive or os.environ.get("PGRUNBOOK_VERBOSE") == "1"
        self._last_progress = 0.0

    def add_secret(self, secret: str | None) -> None:
        if not secret or not secret.strip() or secret in self.secrets:
            return
        self.secrets.append(secret)
        # the longest first: a secret that contains another is masked whole
        self.secrets.sort(key=len, reverse=True)
        self._patterns = [secret_pattern(s) for s in self.secrets]

    def redact(self, text: str) -> str:
        for pattern in self._patterns:
            text = pattern.sub("***", text)
        return text

    def _emit(self, text: str) -> None:
        sys.stderr.write(self.redact(text) + "\n")
        sys.stderr.flush()

    def step(self, text: str) -> None:
        """A step of the work: shown on a terminal, silent under cron."""
        if self.verbose:
            self.clear_progress()
            self._emit(f"・{text}")

    def warn(self, text: str) -> None:
        self.clear_progress()
        self._emit(f"警告: {text}")

    def summary(self, text: str) -> None:
        """The one line a cron mail shows."""
        self.clear_progress()
        self._emit(text)

    def result(self, text: str) -> None:
        sys.stdout.write(self.redact(text) + "\n")
        sys.stdout.flush()

    def progress(self, done: int, started: float, label: str) -> None:
        if not self.interactive:
            return
        now = time.monotonic()
        if now - self._last_progress < 0.5:
            return
        self._last_progress = now
        rate = done / max(now - started, 1e-6)
        sys.stderr.write(f"\r  {label}: {human_size(done)}  {human_size(rate)}/s   ")
        sys.stderr.flush()

    def clear_progress(self) -> None:
        if self.interactive and self._last_progress:
            sys.stderr.write("\r" + " " * 60 + "\r")
            self._last_progress = 0.0
