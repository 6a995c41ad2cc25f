"""The project's executor: Dagster's in-process executor, with the repairs a run started from a terminal or cron
(`dagster asset materialize`, no daemon) needs while one of its steps waits for a pool slot (nas_walk, orthanc_upload).

Dagster 1.13's in-process executor, while a step waits for a slot:
- spins: its loop sleeps ``InstanceConcurrencyContext.interval_to_next_pending_claim_check()``, which returns
  ``min(0, ...)``, so it never sleeps (a core at 100 %; dagster-io/dagster#20367 noticed it and was closed unmerged);
- is deaf to SIGINT and SIGTERM: a run captures them and raises them only inside a step's body, which a waiting step
  never reaches;
- waits forever for the slot of a run whose process was SIGKILLed: slots are freed by the daemon's run monitoring,
  and only for runs that ended; a killed CLI run stays STARTED for ever.

So here, a waiting step sleeps (at most ``POLL_SECONDS`` at a time), stops on a signal, and before each look at its
pool frees the slots of the runs that cannot use them any more (``free_slots_of_dead_runs``), saying which and why.
Every run records which process runs it (process_identity.py), and frees its own slots when it ends, however it ends.
The rest is Dagster's own in-process execution, unchanged. Internal Dagster classes are used (there is no public
hook in the wait): pacs_assets_tests/automation/test_dead_runs.py fails if a Dagster upgrade changes them.
"""

from __future__ import annotations

import os
import time

from dagster import DagsterExecutionInterruptedError, DagsterInstance, executor
from dagster._core.definitions.executor_definition import IN_PROC_CONFIG, _core_in_process_executor_creation
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import inner_plan_execution_iterator
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.executor.in_process import InProcessExecutor
from dagster._utils.interrupts import pop_captured_interrupt

from pacs_assets.process_identity import ALIVE, DEAD, HOST_TAG, PID_TAG, process_state, tags_of_this_process

# Longest sleep of a waiting step: a signal is noticed within it. Dagster still asks the pool only every 1-15 s.
POLL_SECONDS = 1.0
# A run that ended but still holds slots and whose process we cannot see is freed after this, as run monitoring
# (dagster.yaml: free_slots_after_run_end_seconds) does with a daemon.
FREE_AFTER_END_SECONDS = 5.0


def _why_dead(record) -> str | None:
    """Why the run of ``record`` (None: deleted) can no longer use its slots, or None if it may (alive, or
    elsewhere: never guessed)."""
    if record is None:
        return "the run no longer exists"
    run = record.dagster_run
    state = process_state(run.tags)
    if not run.is_finished:
        where = f"PID {run.tags.get(PID_TAG)} on {run.tags.get(HOST_TAG)}"
        return f"its process ({where}) is gone" if state == DEAD else None
    if state == ALIVE:
        return None  # marked ended (terminated in the UI?) but its process still works: its slot is in use
    if state == DEAD or time.time() - (record.end_time or 0) > FREE_AFTER_END_SECONDS:
        return f"it ended ({run.status.value})"
    return None


def free_slots_of_dead_runs(instance: DagsterInstance, pool: str, own_run_id: str, log) -> list[str]:
    """Free the slots (held or queued for) in ``pool`` of every other run that cannot use them any more; a run still
    STARTED whose process is gone is marked failed first. One warning per run freed; returns their IDs."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    run_ids = {s.run_id for s in info.claimed_slots} | {p.run_id for p in info.pending_steps}
    freed = []
    for run_id in sorted(run_ids - {own_run_id}):
        record = instance.get_run_record_by_id(run_id)
        why = _why_dead(record)
        if why is None:
            continue
        if record is not None and not record.dagster_run.is_finished:
            instance.report_run_failed(record.dagster_run, message=f"Marked failed by run {own_run_id}: {why}.")
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        log.warning(f"Freed the '{pool}' pool slots of run {run_id}: {why}.")
        freed.append(run_id)
    return freed


class _SleepingClaims(InstanceConcurrencyContext):
    def __init__(self, instance: DagsterInstance, dagster_run, log):
        super().__init__(instance, dagster_run)
        self._log = log

    def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
        # Called once per turn of the wait loop: where a captured SIGINT/SIGTERM can end the wait.
        if pop_captured_interrupt():
            raise DagsterExecutionInterruptedError(f"Interrupted while step {step_key} waited for pool "
                                                   f"'{concurrency_key}'.")
        due = step_key not in self._pending_claims or time.time() > self._pending_timeouts[step_key]
        if due and self._instance.event_log_storage.supports_global_concurrency_limits:
            free_slots_of_dead_runs(self._instance, concurrency_key, self._run_id, self._log)  # before asking
        return super().claim(concurrency_key, step_key, step_priority)

    def interval_to_next_pending_claim_check(self) -> float:
        # Until the next pool look is due (Dagster's returns min(0, ...): no sleep at all), at most POLL_SECONDS.
        wait = min((t - time.time() for t in self._pending_timeouts.values()), default=POLL_SECONDS)
        return min(max(wait, 0.0), POLL_SECONDS)


def _iterator(job_context, execution_plan):
    with _SleepingClaims(job_context.instance, job_context.dagster_run, job_context.log) as claims:
        yield from inner_plan_execution_iterator(job_context, execution_plan, claims)


class _InProcessExecutor(InProcessExecutor):
    def execute(self, plan_context, execution_plan):
        # As InProcessExecutor.execute, with _SleepingClaims as the pool wait.
        instance, run_id = plan_context.instance, plan_context.run_id
        instance.add_run_tags(run_id, tags_of_this_process())
        yield DagsterEvent.engine_event(plan_context, f"Executing steps in process (pid: {os.getpid()})",
                                        EngineEventData.in_process(os.getpid(), execution_plan.step_keys_to_execute))
        try:
            yield from ExecuteRunWithPlanIterable(
                execution_plan=plan_context.execution_plan, iterator=_iterator,
                execution_context_manager=PlanExecutionContextManager(
                    job=plan_context.job, retry_mode=plan_context.retry_mode,
                    execution_plan=plan_context.execution_plan, run_config=plan_context.run_config,
                    dagster_run=plan_context.dagster_run, instance=instance,
                    raise_on_error=plan_context.raise_on_error, output_capture=plan_context.output_capture,
                    step_dependency_config=self.step_dependency_config))
        finally:
            # In one process nothing of this run works once this returns: no slot of an interrupted step outlives it.
            if instance.event_log_storage.supports_global_concurrency_limits:
                instance.event_log_storage.free_concurrency_slots_for_run(run_id)


@executor(name="pacs_in_process", config_schema=IN_PROC_CONFIG)
def pacs_in_process_executor(init_context):
    """Every step of a run in its one process, as Dagster's ``in_process`` executor; waiting for a pool slot
    sleeps, answers SIGINT/SIGTERM, and frees the slots of dead runs (module docstring)."""
    plain = _core_in_process_executor_creation(init_context.executor_config)
    return _InProcessExecutor(retries=plain.retries, step_dependency_config=plain.step_dependency_config)
