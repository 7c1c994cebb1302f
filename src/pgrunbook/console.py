"""Operator output: progress on a terminal, one summary line under cron.

stdout carries results only (the last line of a backup is its path); every
message goes to stderr. Known secrets are masked in everything printed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


class Console:
    def __init__(self, secrets: Iterable[str | None] = (), interactive: bool | None = None) -> None:
        self.secrets = [s for s in secrets if s]
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        # PGRUNBOOK_VERBOSE=1 shows the steps without a terminal (tests, debugging)
        self.verbose = self.interactive or os.environ.get("PGRUNBOOK_VERBOSE") == "1"
        self._last_progress = 0.0

    def add_secret(self, secret: str | None) -> None:
        if secret:
            self.secrets.append(secret)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
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
