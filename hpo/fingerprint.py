"""The study's fingerprint: the attributes that say which file made a study, and the check that a file still
matches its study (``hpo run`` refuses a changed one; read-only commands show it with a warning).

A module of its own, without Optuna's storage or ORM, because ``hpo status`` checks it on a snapshot read
with plain SQL (``hpo.snapshot``) as well as on an ``optuna.Study``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from hpo.errors import HpoWarning, StudyMismatchError
from hpo.urls import redact

if TYPE_CHECKING:
    from optuna.study import StudyDirection
    from optuna.trial import FrozenTrial

    from hpo.config import StudyConfig

# Study user attributes hpo writes when it creates a study.
ATTR_FINGERPRINT = "hpo:fingerprint"
ATTR_SECTIONS = "hpo:fingerprints"
ATTR_CONFIG = "hpo:config"
ATTR_N_TRIALS = "hpo:n_trials"


class StudyView(Protocol):
    """What the check reads of a study: ``optuna.Study`` and ``hpo.snapshot.StudySnapshot`` both have it."""

    @property
    def user_attrs(self) -> dict[str, Any]: ...

    @property
    def directions(self) -> list[StudyDirection]: ...

    def get_trials(self, deepcopy: bool = ...) -> Sequence[FrozenTrial]: ...


class StudyChangedWarning(HpoWarning):
    """A read-only command shows a study whose file changed since the study was created."""


def check_fingerprint(cfg: StudyConfig, study: StudyView, strict: bool = True) -> None:
    """Refuse to resume a study whose results came from a different search space, objective or base config.

    ``strict=False`` (commands that only read): a changed file is a ``StudyChangedWarning``, not an error,
    and a study still being created (no fingerprint, no trials) is shown as it is.
    """
    attrs = study.user_attrs
    stored = attrs.get(ATTR_FINGERPRINT)
    if stored is None:
        if not study.get_trials(deepcopy=False):
            return  # still being created; `create_or_resume` completes it
        raise StudyMismatchError(
            f"study {cfg.study.name!r} in {redact(cfg.storage_url)} was not created by hpo; "
            "give `study.name` a new value to start a new study"
        )
    if stored == cfg.fingerprint():
        return
    same_directions = [d.name.lower() for d in study.directions] == cfg.directions
    if not study.get_trials(deepcopy=False) and same_directions:
        return  # nothing to compare yet (e.g. a run that failed at start-up on a typo): the name stays usable
    old = attrs.get(ATTR_SECTIONS, {})
    changed = [k for k, v in cfg.fingerprints().items() if old.get(k) != v]
    if not same_directions:
        changed.append("direction")
    what = ", ".join(changed) or "configuration"
    if not strict:
        warnings.warn(
            StudyChangedWarning(
                f"the study file changed since study {cfg.study.name!r} was created ({what}); "
                "showing the study as it is in the database"
            ),
            stacklevel=2,
        )
        return
    raise StudyMismatchError(
        f"study {cfg.study.name!r} in {redact(cfg.storage_url)} was created from a different "
        f"{what}; its results would not be comparable. "
        "To start a new study, change `study.name` in the file (or delete the old study with "
        f"`optuna delete-study --study-name {cfg.study.name} --storage URL`)."
    )
