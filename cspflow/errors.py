"""Errors a user can cause; the CLI prints them as one line (traceback with ``--debug``)."""

from __future__ import annotations

__all__ = ["CspflowError", "SpecError"]


class CspflowError(Exception):
    """A problem the user can fix; the message says what happened and what to do."""


class SpecError(CspflowError):
    """An invalid campaign spec or other user input; ``problems`` lists every error found."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []
