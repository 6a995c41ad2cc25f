"""Asset checks on every NAS graph (the work is in pipeline/checks.py; a kind may add its own).

- ``every_file_accounted_for`` (on dicom_index, **blocking**): each inventoried DICOM file of the run's
  procedure dates is in the index, and each skipped/failed file has a reason. If not, the index is
  inconsistent with the walk and uploading from it would leave files unaccounted for: the import waits.
- ``no_sop_instance_conflicts`` (on dicom_index, not blocking): one SOP Instance UID on two NAS devices
  with different patient, study or bytes. Orthanc keeps the first arrival, so a person must look; but
  one conflict must not hold up the import of everything else.
- ``no_uid_conflicts`` (on orthanc_instances, **warning**): files sharing a SOP Instance UID with different
  bytes, within this NAS and with other NAS devices, and files that ended ``uid_conflict`` (Orthanc kept
  another file with their UIDs). On orthanc_instances because content is known from the upload (the hash
  of the bytes sent, Orthanc's MD5 on ``AlreadyStored``); a warning because each such file is recorded and
  named in ``pacs history --status uid_conflict``, and nothing a rerun does can change it.
- ``indexed_instances_in_orthanc`` (on orthanc_instances): every file of the run's procedure dates that the
  ledger says is in Orthanc really is, in batched ``/tools/find`` queries. The whole-NAS sweep is the
  reconciliation's check (defs/reconciliation.py).
- ``one_person_per_patient_id`` (on dicom_index, **error**) and ``no_patient_name_variants`` (**warning**): a
  PatientID (as Orthanc would receive it) or a Study Instance UID of this NAS shared with a different person,
  or with a differently spelled record (pipeline/identity_guard.py). Not blocking: the upload's guard holds exactly
  the colliding files and everything else flows on.
- ``no_held_files`` (on orthanc_instances, **error**): files held back by the guard, by kind of collision
  (including what Orthanc already holds under the ID), until someone decides (`pacs identity`).
- ``every_folder_read`` (on file_inventory and the reconciliation, reported by the walk itself): no folder's
  listing (or file's stat) kept failing or was refused. Such a folder's known rows are kept as they were,
  never read as deleted; the check fails so that someone looks (permissions, a flaky share).
- the kind's own checks (``NasKind.checks``), e.g. ``lossless_in_orthanc`` for Firebird/JPEG 2000.
Metadata carries counts and NAS ids only, never UIDs or patient data.

The same concept on two layers: the Dagster asset checks (defs/checks.py) and their work (pipeline/checks.py).
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    asset_check,
    multi_asset_check,
)

from pacs_assets.config import NasConfig, PacsConfig
from pacs_assets.defs.partitions import run_window
from pacs_assets.nas.base import KindCheck
from pacs_assets.nas.registry import kind_of
from pacs_assets.pipeline import checks as work
from pacs_assets.pipeline.identity_guard import guard_for

FOLDERS_READ = "every_folder_read"


def folders_read_spec(key: AssetKey) -> AssetCheckSpec:
    return AssetCheckSpec(FOLDERS_READ, asset=key,
                          description="The walk read every folder: none kept failing (EIO, ESTALE...) or was refused; "
                                      "the rows of a folder not read are kept as they were, never deleted.")


def folders_read_result(not_read: int, kept: int) -> AssetCheckResult:
    """The walk's own verdict (counts only: folder names often name patients)."""
    return AssetCheckResult(check_name=FOLDERS_READ, passed=not_read == 0,
                            metadata={"folders_not_read": not_read, "rows_kept_unread": kept})


def build_nas_checks(nas: NasConfig, config: PacsConfig) -> list:
    index_key = AssetKey([nas.id, "dicom_index"])
    orthanc_key = AssetKey([nas.id, "orthanc_instances"])

    @asset_check(asset=index_key, name="every_file_accounted_for", blocking=True, required_resource_keys={"index"},
                 description="Every inventoried DICOM file is indexed; every skipped or failed file has a reason.")
    def every_file_accounted_for(context: AssetCheckExecutionContext) -> AssetCheckResult:
        start, end = run_window(context.run.tags, nas)
        passed, metadata = work.every_file_accounted_for(context.resources.index.path, nas.id, start, end)
        return AssetCheckResult(passed=passed, metadata=metadata)

    @asset_check(asset=index_key, name="no_sop_instance_conflicts", required_resource_keys={"index"},
                 description="No SOP Instance UID appears on two NAS devices with different patient, study or bytes.")
    def no_sop_instance_conflicts(context: AssetCheckExecutionContext) -> AssetCheckResult:
        passed, metadata = work.no_sop_instance_conflicts(context.resources.index.path, nas.id)
        return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.ERROR, metadata=metadata)

    @asset_check(asset=orthanc_key, name="no_uid_conflicts", required_resource_keys={"index"},
                 description="No file shares a SOP Instance UID with a file of different content (on this NAS or "
                             "another); none was set aside by Orthanc as uid_conflict.")
    def no_uid_conflicts(context: AssetCheckExecutionContext) -> AssetCheckResult:
        passed, metadata = work.no_uid_conflicts(context.resources.index.path, nas.id)
        return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.WARN, metadata=metadata)

    @asset_check(asset=orthanc_key, name="indexed_instances_in_orthanc", required_resource_keys={"index", "orthanc"},
                 description="Every file recorded as imported or duplicate is present in Orthanc.")
    def indexed_instances_in_orthanc(context: AssetCheckExecutionContext) -> AssetCheckResult:
        start, end = run_window(context.run.tags, nas)  # the run's own window, not every instance of the NAS
        passed, metadata = work.indexed_instances_in_orthanc(context.resources.index.path, nas.id,
                                                            context.resources.orthanc.client(), start, end)
        return AssetCheckResult(passed=passed, metadata=metadata)

    @multi_asset_check(specs=[
        AssetCheckSpec("one_person_per_patient_id", asset=index_key,
                       description="No PatientID (as Orthanc would receive it) or Study Instance UID of this NAS is "
                                   "shared with a different person, here or on another NAS. Their files are held: "
                                   "see `pacs identity`."),
        AssetCheckSpec("no_patient_name_variants", asset=index_key,
                       description="No PatientID of this NAS is shared by records that may be one person spelled "
                                   "differently (umlaut, typo, missing birth date). Listed by `pacs identity`, not "
                                   "held."),
    ], required_resource_keys={"index"}, name=f"{nas.id}_patient_identity")
    def patient_identity(context: AssetCheckExecutionContext):
        # One pass over the index's person records answers both (ERROR: different people, WARN: variants).
        different, variants = work.patient_identity(context.resources.index.path, nas.id, guard_for(config))
        yield AssetCheckResult(check_name="one_person_per_patient_id", asset_key=index_key,
                               passed=not different["collisions"], severity=AssetCheckSeverity.ERROR,
                               metadata=different)
        yield AssetCheckResult(check_name="no_patient_name_variants", asset_key=index_key,
                               passed=not variants["collisions"], severity=AssetCheckSeverity.WARN,
                               metadata=variants)

    @asset_check(asset=orthanc_key, name="no_held_files", required_resource_keys={"index"},
                 description="No file of this NAS is held back from Orthanc because its patient identity "
                             "collides (counts by kind; `pacs identity` lists them and records decisions).")
    def no_held_files(context: AssetCheckExecutionContext) -> AssetCheckResult:
        passed, metadata = work.held_files(context.resources.index.path, nas.id)
        return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.ERROR, metadata=metadata)

    checks = [every_file_accounted_for, no_sop_instance_conflicts, no_uid_conflicts, indexed_instances_in_orthanc,
              patient_identity, no_held_files]
    return checks + [_kind_check(nas, spec) for spec in kind_of(nas).checks]


def _kind_check(nas: NasConfig, spec: KindCheck):
    @asset_check(asset=AssetKey([nas.id, spec.on]), name=spec.name, required_resource_keys={"index", "orthanc"},
                 description=spec.description)
    def kind_check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        passed, metadata = work.kind_check(spec, nas, context.resources.index.path, context.resources.orthanc.client())
        return AssetCheckResult(passed=passed, metadata=metadata)

    return kind_check
