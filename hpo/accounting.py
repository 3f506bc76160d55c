"""Which trials count towards a study's ``n_trials``: the rule, and the trial attributes it reads.

Several orchestrators (other machines) may share one study, so the study's total is counted in the
storage, not in any one process. A trial counts when it is finished or running, unless it is a failure
that was re-queued (its parameters run again as a new trial) or discarded (asked, then found not needed).
The storage adapter (``hpo.store``) answers the same question in SQL for RDB storages.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

# Trial user attributes hpo writes.
A_REASON = "reason"  # why a trial was pruned or failed
A_REQUEUED = "requeued"  # this FAIL was re-run as a new trial: it does not count towards n_trials
A_RETRY_OF = "retry_of"  # the trial number this one re-runs
A_DISCARDED = "discarded"  # asked, then found not needed (another process filled n_trials or the grid point)


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards ``n_trials``: finished or running, and not a re-queued failure."""
    if trial.state == TrialState.WAITING:
        return False
    if trial.state == TrialState.FAIL and (trial.user_attrs.get(A_REQUEUED) or trial.user_attrs.get(A_DISCARDED)):
        return False
    return True
