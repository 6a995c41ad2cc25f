"""The identity release sensor: when an operator records a decision (`pacs identity decide`), the files it
released are uploaded by one catch-up run per NAS concerned, not at the next nightly reconciliation.

The decision names the NAS devices and procedure dates whose files it released (pipeline/identity_review.py);
the catch-up (``<nas>/reconciliation_catch_up``) rebuilds nothing that is current and uploads exactly the dates
with files not in Orthanc, so nothing is walked again and nothing else is sent. The cursor is the number of
the last decision seen; the run key names the decision, so one decision never starts two runs.
"""

from __future__ import annotations

from dagster import AssetKey, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from pacs_assets.config import PacsConfig
from pacs_assets.identity.decisions import DecisionBook, decisions_path


def build_identity_sensor(config: PacsConfig, reconciliation_jobs: dict[str, object]):
    """``reconciliation_jobs``: NAS id -> its ``<nas>_reconciliation_job``."""
    path = decisions_path(config.index.path, config.identity.decisions_path)

    @sensor(name="identity_release_sensor", jobs=list(reconciliation_jobs.values()), minimum_interval_seconds=30,
            default_status=DefaultSensorStatus.STOPPED,
            description="Uploads the files an identity decision (`pacs identity decide`) released: one catch-up "
                        "run per NAS concerned, nothing walked again.")
    def identity_release_sensor(context: SensorEvaluationContext):
        seen = int(context.cursor or 0)
        book = DecisionBook.load(path)
        new = [d for d in book.decisions if d.number > seen]
        if not new:
            return SkipReason(f"no new decision ({len(book.decisions)} in all)")
        requests = []
        for decision in new:
            for nas_id in sorted(decision.released):
                if nas_id in reconciliation_jobs:
                    requests.append(RunRequest(
                        run_key=f"identity-decision-{decision.number}-{nas_id}",
                        job_name=reconciliation_jobs[nas_id].name,
                        asset_selection=[AssetKey([nas_id, "reconciliation_catch_up"])],
                        tags={"pacs/identity_decision": str(decision.number)}))
        return SensorResult(run_requests=requests, cursor=str(max(d.number for d in new)))

    return identity_release_sensor
