"""Asset checks on every NAS graph.

- ``every_file_accounted_for`` (on dicom_index, **blocking**): each inventoried DICOM file of the run's
  procedure dates is in the index, and each skipped/failed file has a reason. If not, the index is inconsistent with the walk and
  uploading from it would leave files unaccounted for: the import waits until it is fixed.
- ``no_sop_instance_conflicts`` (on dicom_index, not blocking): one SOP Instance UID on two NAS devices
  with different patient, study or bytes. Orthanc keeps the first arrival, so a person must look; but
  one conflict must not hold up the import of everything else.
- ``indexed_instances_in_orthanc`` (on orthanc_instances): every file the ledger says is in Orthanc
  really is, checked by Orthanc's deterministic instance IDs on parallel persistent sessions.
- ``lossless_in_orthanc`` (Firebird/JPEG 2000 NAS only): images fetched back from Orthanc decode
  pixel for pixel equal to the source JP2 (a configurable sample, or all).
Metadata carries counts and NAS ids only, never UIDs or patient data.
"""


import datetime as dt
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetKey, asset_check

from pacs_assets.config import FirebirdJpeg2000Nas, NasConfig, PacsConfig
from pacs_assets.index import checks as sql
from pacs_assets.jpeg2000 import verify_lossless
from pacs_assets.orthanc import OrthancUnavailable


def run_window(tags: Mapping[str, str], nas: NasConfig) -> tuple[dt.date, dt.date]:
    """The procedure dates [start, end) the run materialized, from its partition tags; all of them if none."""
    first = tags.get("dagster/partition") or tags.get("dagster/asset_partition_range_start")
    last = tags.get("dagster/partition") or tags.get("dagster/asset_partition_range_end")
    if not first or not last:
        return nas.partitions_start, dt.date.max
    return dt.date.fromisoformat(first), dt.date.fromisoformat(last) + dt.timedelta(days=1)


def build_nas_checks(nas: NasConfig, config: PacsConfig) -> list:
    index_key = AssetKey([nas.id, "dicom_index"])
    orthanc_key = AssetKey([nas.id, "orthanc_instances"])

    @asset_check(asset=index_key, name="every_file_accounted_for", blocking=True, required_resource_keys={"index"},
                 description="Every inventoried DICOM file is indexed; every skipped or failed file has a reason.")
    def every_file_accounted_for(context: AssetCheckExecutionContext) -> AssetCheckResult:
        start, end = run_window(context.run.tags, nas)
        counts = sql.unaccounted_files(context.resources.index.path, nas.id, start, end)
        return AssetCheckResult(passed=counts["dicom_not_indexed"] == 0 and counts["without_reason"] == 0,
                                metadata=counts)

    @asset_check(asset=index_key, name="no_sop_instance_conflicts", required_resource_keys={"index"},
                 description="No SOP Instance UID appears on two NAS devices with different patient, study or bytes.")
    def no_sop_instance_conflicts(context: AssetCheckExecutionContext) -> AssetCheckResult:
        groups = [g for g in sql.sop_conflicts(context.resources.index.path) if nas.id in g[0].split(",")]
        table = "\n".join(f"| {nas_ids} | {differs} | {n} |" for nas_ids, differs, n in groups)
        return AssetCheckResult(
            passed=not groups, severity=AssetCheckSeverity.ERROR,
            metadata={"conflicting_instances": sum(g[2] for g in groups),
                      "conflicts": f"| NAS | differs | instances |\n|---|---|---|\n{table}" if groups else "none"})

    @asset_check(asset=orthanc_key, name="indexed_instances_in_orthanc", required_resource_keys={"index", "orthanc"},
                 description="Every file recorded as imported or duplicate is present in Orthanc.")
    def indexed_instances_in_orthanc(context: AssetCheckExecutionContext) -> AssetCheckResult:
        client = context.resources.orthanc.client()
        try:
            client.system()
        except OrthancUnavailable as exc:
            return AssetCheckResult(passed=False, metadata={"error": str(exc)})
        checked = missing = 0
        with ThreadPoolExecutor(8) as pool:
            for batch in sql.stored_orthanc_ids(context.resources.index.path, nas.id):
                present = list(pool.map(client.instance_exists, batch))
                checked += len(batch)
                missing += present.count(False)
        return AssetCheckResult(passed=missing == 0, metadata={"checked": checked, "missing_in_orthanc": missing})

    checks = [every_file_accounted_for, no_sop_instance_conflicts, indexed_instances_in_orthanc]
    if isinstance(nas, FirebirdJpeg2000Nas):
        checks.append(_lossless_check(nas, orthanc_key))
    return checks


def _lossless_check(nas: FirebirdJpeg2000Nas, orthanc_key: AssetKey):
    @asset_check(asset=orthanc_key, name="lossless_in_orthanc", required_resource_keys={"index", "orthanc"},
                 description="Decodes images back from Orthanc and compares them pixel for pixel with the source "
                             f"JPEG 2000 files ({nas.lossless_check_sample or 'all'} per evaluation; 0 = all).")
    def lossless_in_orthanc(context: AssetCheckExecutionContext) -> AssetCheckResult:
        client = context.resources.orthanc.client()
        compared = differ = 0
        for file_path, orthanc_id in sql.lossless_candidates(context.resources.index.path, nas.id,
                                                             nas.lossless_check_sample):
            data = client.instance_file(orthanc_id)
            equal, _why = verify_lossless(data, nas.root / file_path)
            compared += 1
            differ += not equal
        return AssetCheckResult(passed=differ == 0, metadata={"compared": compared, "differ": differ})

    return lossless_in_orthanc
