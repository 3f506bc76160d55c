"""Errors that reach the user as one line, without a traceback (unless ``--debug``)."""

from __future__ import annotations


class HpoError(Exception):
    """Base class of every error the CLI prints as a single line and exits 1 on."""

    # The traceback of the worker process the error came from: the CLI prints it under --debug.
    worker_traceback: str | None = None


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


class WorkerSetupError(HpoError):
    """A worker failed before its first trial (data preparation, model loading).

    ``key`` is the study-file setting at fault when the trainer named one (``trainers.base.ConfigError``).
    """

    def __init__(self, message: str, key: str | None = None, worker_traceback: str | None = None) -> None:
        self.message = message
        self.key = key
        self.worker_traceback = worker_traceback
        super().__init__(f"{key}: {message}" if key else message)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, Kubernetes and systemd send before a kill), raised where Ctrl-C raises
    KeyboardInterrupt so that it takes the same graceful path; exits 143 instead of 130."""


class HpoWarning(UserWarning):
    """A warning the CLI prints as one line (``warning: ...``) before going on."""
