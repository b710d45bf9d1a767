"""Errors a user can cause; the CLI prints them as one line (traceback with ``--debug``)."""

from __future__ import annotations

__all__ = ["CspflowError", "SpecError", "DatabaseUnreachable"]


class CspflowError(Exception):
    """A problem the user can fix; the message says what happened and what to do."""


class SpecError(CspflowError):
    """An invalid campaign spec or other user input; ``problems`` lists every error found."""

    def __init__(self, message: str, problems: list[str] | None = None,
                 source: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.problems = problems or []
        self.source = source

    def lines(self) -> list[str]:
        """What the CLI prints: one line for one problem, else a header and a line per problem."""
        if len(self.problems) == 1 and self.source:
            problem = self.problems[0].removeprefix("(top level): ")
            return [f"{self.source}: {problem}"]
        return [str(self), *(f"  - {p}" for p in self.problems)]


class DatabaseUnreachable(CspflowError):
    """The database does not answer; workers wait these out (:mod:`cspflow.store.outage`)."""
