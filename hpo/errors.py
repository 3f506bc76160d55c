"""Errors that reach the user as one line, without a traceback (unless ``--debug``)."""

from __future__ import annotations


class HpoError(Exception):
    """Base class of every error the CLI prints as a single line and exits 1 on."""


class StudyFileError(HpoError):
    """A study file that cannot be read or does not validate.

    ``str(err)`` is ``FILE: a.b.c: message`` for each problem, one per line.
    """

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        if not problems:
            raise ValueError("`problems` must not be empty.")
        self.path = path
        self.problems = problems
        lines = [f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


class StudyMismatchError(HpoError):
    """The storage holds a study of the same name created from a different study file."""


class StorageError(HpoError):
    """The storage cannot be opened or has no such study."""


class HpoWarning(UserWarning):
    """A warning the CLI prints as one line (``warning: ...``) before going on."""
