"""The one exception type for failures an operator can cause or fix."""

from __future__ import annotations


class RunbookError(Exception):
    """An expected failure: a one-line message (Japanese) and what to do next.

    Tasks turn it into a clean nonzero exit; a traceback means a bug.
    ``exit_code`` lets monitoring tasks distinguish outcomes (see ``status``).
    """

    def __init__(self, message: str, hint: str = "", exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def one_line(self) -> str:
        text = f"エラー: {self.message}"
        if self.hint:
            text += f" → {self.hint}"
        return " ".join(text.split())


class Refused(RunbookError):
    """A guard said no (confirmation, environment, approval): nothing was changed."""
