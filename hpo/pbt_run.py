"""Running a PBT population: the orchestrator's loop when the study file has a ``pbt`` section.

Each member is one Optuna trial, RUNNING from the population's start to its end. The loop trains every
member for one interval (``interval_steps``) on the workers, each interval resuming from the member's
checkpoint (``hpo.pbt_worker``); when all members reached the interval's end, it takes the generation's
decisions (``hpo.pbt.exploit_and_explore``, pure), records them, copies the checkpoints
(``hpo.pbt_store``), and starts the next interval. After the last interval every member is told its final
value. The orchestrator stays the single writer; a member's state between intervals is its trial's ``pbt``
user attribute (``MemberRecord``), and a generation's decisions are written to the study (one write)
before any of them is applied, so a run killed at any point resumes the population from its last
checkpoints and takes the same decisions again.
"""

from __future__ import annotations

import math
import os
import queue
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.ledger import HOSTNAME, Reason, ReasonKind, pid_alive
from hpo.orchestrator import Orchestrator, Running, RunSummary
from hpo.pbt import (
    ATTR,
    MemberRecord,
    exploit_and_explore,
    mutable_paths,
    mutable_specs,
)
from hpo.pbt_store import checkpoint_root, copy_checkpoint, member_dir
from hpo.pbt_worker import INTERVAL_STOP
from hpo.protocol import Stop, TrialResult
from hpo.record import A_REASON, TrialAttrs
from hpo.space import param_name
from hpo.worker import WorkerHandle
from trainers.config import RunConfig, ScheduleStep

BOUNDARY_ATTR = "pbt_boundary"  # study user attribute: the last generation's decisions, and whether applied


def member_run(cfg: Any, record: MemberRecord) -> RunConfig:
    """The resolved run of a member: its root's sampled parameters, and its schedule of mutable ones.

    The fixed parameters (batch size, ...) are those the first entry of the schedule holds: every copy keeps
    its parent's, so a member's weights always trained with them.
    """
    assert cfg.pbt is not None
    paths = {param_name(p, cfg.search_space[p]): p for p in mutable_paths(cfg.pbt, cfg.search_space)}
    run: RunConfig = cfg.trial_run(record.schedule[0][1])
    steps = [
        ScheduleStep(step=s, set={paths[k]: float(v) for k, v in p.items() if k in paths}) for s, p in record.schedule
    ]
    return run.model_copy(update={"schedule": steps})


class PbtOrchestrator(Orchestrator):
    """The orchestrator of a population (see the module docstring); workers, results and display are the base's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.cfg.pbt is not None
        self.section = self.cfg.pbt
        assert self.cfg.fidelity.max_steps is not None  # validation: PBT counts optimizer steps
        self.max_steps: int = self.cfg.fidelity.max_steps
        self.root = checkpoint_root(self.cfg)
        self.mutable = mutable_specs(self.section, self.cfg.search_space)
        self.seed = int(getattr(self.cfg.sampler, "seed", None) or 0)
        self.records: dict[int, MemberRecord] = {}  # member -> record
        self.handles: dict[int, optuna.Trial] = {}  # member -> its trial
        self.member_of: dict[int, int] = {}  # trial number -> member
        self.decided = 0  # the last boundary whose decisions were taken (0: none yet)

    # ------------------------------------------------------------------------------------------ members
    def _running_ids(self) -> list[int]:
        # Every member this process holds is alive, on a worker or waiting for the next interval: the
        # heartbeat covers them all, and orphan checks never take them.
        return [self.store.trial_id(t) for m, t in tuple(self.handles.items()) if self.records[m].status == "training"]

    def _save(self, m: int) -> None:
        self._set_attrs(self.handles[m], {ATTR: self.records[m].to_json()})

    def _adopt(self) -> None:
        """Take the population's members from the storage (a resumed run), and create the missing ones."""
        for t in self.study.get_trials(deepcopy=False):
            if ATTR not in t.user_attrs:
                continue
            rec = MemberRecord.from_json(t.user_attrs[ATTR])
            if t.state == TrialState.RUNNING:
                self._refuse_live_owner(t)
                rec.status = "training"  # a run killed while telling the final values: told again at the end
            elif rec.status == "training":
                continue  # a member closed elsewhere (e.g. failed by an older hpo's orphan check): not ours
            self.records[rec.member] = rec
            self.handles[rec.member] = self.store.handle(self.study, t)
            self.member_of[t.number] = rec.member
        for m in range(self.section.population):
            if m in self.records:
                continue
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trial = self.study.ask(self.distributions)
            self.records[m] = MemberRecord(member=m, schedule=[(0, dict(trial.params))])
            self.handles[m] = trial
            self.member_of[trial.number] = m
            self._save(m)
        # This process holds the population now: another `hpo run` / `hpo worker` on it is refused while it lives.
        owner = TrialAttrs(host=HOSTNAME, orchestrator_pid=os.getpid()).to_user_attrs()
        for m in self._training():
            self._set_attrs(self.handles[m], owner)
        self._beat.beat(self._running_ids())

    def _refuse_live_owner(self, t: optuna.trial.FrozenTrial) -> None:
        attrs = TrialAttrs.from_user_attrs(t.user_attrs)
        pid, host = attrs.orchestrator_pid, attrs.host
        if pid is None or pid == os.getpid():
            return
        alive = pid_alive(pid) if host == HOSTNAME else t.number not in self._stale_numbers()
        if alive:
            raise HpoError(
                f"the population of study {self.cfg.study.name!r} is being run by process {pid} on {host}; "
                "one `hpo run` drives a population (wait for it, or stop it and run again to resume)"
            )

    def _stale_numbers(self) -> set[int]:
        stale = self.store.stale_trial_ids()
        return {t.number for t in self.study.get_trials(deepcopy=False) if self.store.trial_id(t) in stale}

    def _training(self) -> list[int]:
        return sorted(m for m, r in self.records.items() if r.status == "training")

    def _target(self) -> int:
        """The step the current interval ends at: one interval after the last boundary decided."""
        return min(self.decided + self.section.interval_steps, self.max_steps)

    # --------------------------------------------------------------------------------------------- loop
    def _loop(self, summary: RunSummary, deadline: float | None, should_stop: Callable[[], bool] | None) -> None:
        self._adopt()
        self._apply_pending_boundary()
        while True:
            accepting = not (deadline is not None and time.monotonic() >= deadline) and not (
                should_stop is not None and should_stop()
            )
            training = self._training()
            if not training:
                return
            target = self._target()
            if accepting:
                busy = {self.member_of[n] for n in self.running}
                waiting = [m for m in training if self.records[m].step < target and m not in busy]
                for w, m in zip(self._idle(), waiting, strict=False):
                    self._launch_member(w, m, target)
            if not self.running:
                if not accepting:
                    return
                if all(self.records[m].step >= target for m in training):
                    self._boundary(target, summary)
                    continue
            self._housekeeping()
            try:
                msg = self.results.get(timeout=0.5)
            except queue.Empty:
                self._check_workers(summary)
                continue
            self._handle(msg, summary)

    def _launch_member(self, worker: WorkerHandle, m: int, until: int) -> None:
        rec, trial = self.records[m], self.handles[m]
        run = member_run(self.cfg, rec)
        payload = {
            "run": run.model_dump(mode="json"),
            "segment": {
                "dir": str(member_dir(self.root, m).resolve()),
                "until": until,
                "every": self.section.interval_steps,
            },
        }
        self.running[trial.number] = Running(trial, worker, rec.params, time.monotonic(), step=rec.step)
        worker.send(trial.number, payload)
        self.display.trial_started(trial.number, rec.params, worker.spec.device_label, self.max_steps)
        self._mark_launched(trial, worker)

    def _judge(self, r: Running, step: int, metrics: dict[str, float]) -> None:
        """Record the eval as the member's curve; members are never pruned, they are copied over."""
        value = metrics.get(self.metric)
        r.step = step
        if value is None or step <= r.last_eval_step or r.stop_sent:
            return
        r.last_eval_step = step
        if math.isfinite(value):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a step reported before an interruption: kept as it was
                r.trial.report(value, step)
        self.display.trial_eval(r.trial.number, step, value)

    def _release(self, r: Running) -> int:
        del self.running[r.trial.number]
        r.worker.trial = None
        self.display.running.pop(r.trial.number, None)
        return self.member_of[r.trial.number]

    def _on_done(self, r: Running, result: TrialResult, summary: RunSummary) -> None:
        summary.compute_time += result.train_time + result.eval_time
        m = self._release(r)
        rec = self.records[m]
        if result.stopped not in (None, INTERVAL_STOP) or r.stop_sent != Stop.NONE:
            return  # interrupted: its checkpoint at the stop resumes it exactly; the interval is not over
        rec.step = result.steps
        value = result.metrics.get(self.metric)
        rec.value = value if value is not None and math.isfinite(value) else None
        rec.retries = 0
        self._save(m)
        self._set_attrs(r.trial, TrialAttrs(metrics=result.metrics, steps=result.steps).to_user_attrs())

    def _finish(
        self,
        r: Running,
        state: TrialState,
        summary: RunSummary,
        value: float | list[float] | None = None,
        reason: Reason | None = None,
        attrs: dict[str, Any] | None = None,
        requeue: bool = False,
    ) -> None:
        """An interval that ended without a result: interrupted (resumed later from its checkpoint), or
        failed (non-finite loss, an error, its worker died too often): the member then has no value at
        this boundary and copies a top member there."""
        m = self._release(r)
        if reason is not None and reason.kind is ReasonKind.INTERRUPTED:
            return
        rec = self.records[m]
        rec.step, rec.value = self._target(), None
        self._save(m)
        self._set_attrs(r.trial, {"pbt_failure": str(reason) if reason else state.name, **(attrs or {})})
        self.display.message(f"[yellow]member {m} (trial {r.trial.number}): interval failed ({reason})[/]")

    def _worker_died(self, r: Running, code: int | None, summary: RunSummary) -> None:
        """The member's interval runs again from its checkpoint on the new worker (``max_retries``)."""
        number = r.trial.number
        m = self.member_of[number]
        rec = self.records[m]
        if rec.retries < self.max_retries:
            self._release(r)
            rec.retries += 1
            self._save(m)
            self.display.message(
                f"[yellow]member {m} (trial {number}): worker died (exit code {code}); "
                f"its interval runs again from step {rec.step}[/]"
            )
        else:
            self._finish(r, TrialState.FAIL, summary, reason=Reason.worker_died(code, False))

    # ------------------------------------------------------------------------------------- generations
    def _boundary(self, step: int, summary: RunSummary) -> None:
        shown = ", ".join(
            f"{m}: {'failed' if r.value is None else f'{r.value:.4g}'}"
            for m, r in sorted(self.records.items())
            if r.status == "training"
        )
        self.display.message(f"step {step}: {self.metric} by member {{{shown}}}")
        if step >= self.max_steps:
            self._final(summary)
            return
        trials = {m: self.handles[m].number for m in self.records}
        training = {m: self.records[m] for m in self._training()}
        new = exploit_and_explore(training, trials, step, self.section, self.mutable, self.cfg.direction, self.seed)
        # One write holds the whole generation's decisions: a run killed while applying them applies the
        # same ones again (``_apply_pending_boundary``), never a second draw.
        self.store.set_study_attrs(
            {BOUNDARY_ATTR: {"step": step, "records": {str(m): r.to_json() for m, r in new.items()}, "applied": False}}
        )
        self._apply(step, new)

    def _apply(self, step: int, new: dict[int, MemberRecord]) -> None:
        for m, rec in new.items():
            self.records[m] = rec
            self._save(m)
        self.decided = step
        for m, rec in new.items():
            copy_checkpoint(self.root, rec.lineage[-1].parent, m, step)
            self.display.message(f"member {m} (trial {self.handles[m].number}) {rec.lineage[-1].describe()}")
        self.store.set_study_attrs({BOUNDARY_ATTR: {"step": step, "records": {}, "applied": True}})

    def _apply_pending_boundary(self) -> None:
        pending = self.study.user_attrs.get(BOUNDARY_ATTR)
        if not pending:
            return
        self.decided = int(pending["step"])
        if pending.get("applied", True):
            return
        new = {int(m): MemberRecord.from_json(r) for m, r in pending["records"].items()}
        self._apply(int(pending["step"]), {m: r for m, r in new.items() if self.records[m].status == "training"})

    def _final(self, summary: RunSummary) -> None:
        """The last interval is over: every member is told its final value (its lineage stays on the trial)."""
        for m in self._training():
            rec, trial = self.records[m], self.handles[m]
            rec.status = "done" if rec.value is not None else "failed"
            self._save(m)
            if rec.value is not None:
                self.study.tell(trial, rec.value)
                state, reason = TrialState.COMPLETE, None
            else:
                self._set_attrs(trial, {A_REASON: "PBT member without a value at the last step"})
                self.study.tell(trial, state=TrialState.FAIL)
                state, reason = TrialState.FAIL, "no value"
            summary.ran += 1
            summary.states[state.name] = summary.states.get(state.name, 0) + 1
            self.display.trial_finished(
                trial.number, state.name, rec.value, rec.step, reason or f"{len(rec.lineage)} exploit(s)"
            )
        self.curves.flush()
        self._update_best(force=True)


def member_lines(user_attrs: Mapping[str, Any]) -> list[str]:
    """For a PBT member's trial attributes: its schedule and lineage, as lines to print (else none)."""
    if ATTR not in user_attrs:
        return []
    rec = MemberRecord.from_json(user_attrs[ATTR])
    lines = ["  (PBT: the parameters above are the member's first draw; the schedule its weights trained with:)"]
    for step, params in rec.schedule:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        lines.append(f"  from step {step:>5}: {shown}")
    lines += [f"  {e.describe()}" for e in rec.lineage]
    return lines


def winner_lines(study_file: Any, number: int) -> list[str]:
    """``member_lines`` of trial ``number`` of a PBT study file's study (none for other studies)."""
    from hpo.config import load_study_file
    from hpo.storage import load_existing

    cfg = load_study_file(study_file)
    if cfg.pbt is None:
        return []
    trial = next(t for t in load_existing(cfg).get_trials(deepcopy=False) if t.number == number)
    return member_lines(trial.user_attrs)


def export_run(cfg: Any, trial: optuna.trial.FrozenTrial, resolve: Callable[[dict[str, Any]], RunConfig]) -> RunConfig:
    """The run ``hpo export`` writes for a member: its root's parameters (``resolve`` sets the length) and its
    schedule, the interval boundaries stretched from the trial's length to the run's (a run measured in
    epochs keeps the trial's step numbers)."""
    if ATTR not in trial.user_attrs:
        return resolve(dict(trial.params))
    rec = MemberRecord.from_json(trial.user_attrs[ATTR])
    member = member_run(cfg, rec)
    run = resolve(rec.schedule[0][1])
    total, trial_steps = run.training.max_steps, cfg.fidelity.max_steps
    steps = [s.model_copy(update={"step": s.step * total // trial_steps}) if total > 0 else s for s in member.schedule]
    return run.model_copy(update={"schedule": steps})
