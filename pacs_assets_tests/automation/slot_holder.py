"""A live run that holds a pool slot for as long as a test wants: a one-op job in pool ``orthanc_upload`` with the
project's executor, run on the instance of $DAGSTER_HOME. Not a test module (pytest does not collect it).

    python -m pacs_assets_tests.automation.slot_holder READY STOP

The op touches READY once it holds the slot, then sleeps until STOP exists.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import sys
import time
from pathlib import Path

from dagster import DagsterInstance, OpExecutionContext, execute_job, job, op, reconstructable

from pacs_assets.defs.assets import UPLOAD_POOL
from pacs_assets.defs.executor import pacs_in_process_executor


@op(pool=UPLOAD_POOL, config_schema={"ready": str, "stop": str})
def hold_the_upload_slot(context: OpExecutionContext) -> None:
    Path(context.op_config["ready"]).touch()
    while not Path(context.op_config["stop"]).exists():
        time.sleep(0.1)


@job(executor_def=pacs_in_process_executor)
def slot_holder():
    hold_the_upload_slot()


def main(ready: str, stop: str) -> int:
    config = {"ops": {"hold_the_upload_slot": {"config": {"ready": ready, "stop": stop}}}}
    with DagsterInstance.get() as instance:
        result = execute_job(reconstructable(slot_holder), instance=instance, run_config=config)
    print(f"RESULT {result.run_id} {result.success}", flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
