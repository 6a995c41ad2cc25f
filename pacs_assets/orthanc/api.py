"""What the pipeline uses of Orthanc, on one node (``OrthancClient``, orthanc/client.py) or several sharing one
index (``OrthancNodes``, orthanc/nodes.py): the reads, written once on top of two transport calls that each
implements. ``connect`` (orthanc/connect.py) builds the one or the other from the settings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from pacs_assets.orthanc.ids import orthanc_patient_id

if TYPE_CHECKING:
    from collections.abc import Iterable

    import requests


def _may_be_cut(answer) -> bool:
    """Whether a ``/tools/find`` answer may have been cut short by the site's ``LimitFindResults`` /
    ``LimitFindInstances``: 1.10.1 then returns limit + 1 items (at least 2) and no sign (measured). An answer of
    0 or 1 items is whole, so what it leaves out is surely absent (a first import asks nothing more); otherwise
    what the caller expects and the answer left out is asked for by its ID, where only a 404 means absent."""
    return len(answer) >= 2


class OrthancApi(ABC):
    url: str  # the node's address; several nodes: all of them, for messages
    timeout: float

    @abstractmethod
    def _get(self, path: str, **kw) -> requests.Response:
        """One GET, no retry."""

    @abstractmethod
    def _request(self, method: str, path: str, what: str, *, params: dict | None = None,
                 json: dict | None = None, missing_ok: bool = False,
                 data: bytes | None = None) -> requests.Response | None:
        """One REST call, retried on what can succeed later; a failure raises OrthancUnavailable (one sentence)."""

    @abstractmethod
    def system(self) -> dict:
        """``GET /system``: every failure raises OrthancUnavailable, a refusal OrthancRefused."""

    @abstractmethod
    def upload(self, body, md5: str | None = None):
        """POST one instance; returns an UploadResult (orthanc/client.py), never raises for a refused file."""

    def get_json(self, path: str, what: str | None = None, params: dict | None = None, *,
                 missing_ok: bool = False):
        """GET a JSON answer, retrying what can succeed later. ``what`` names the endpoint without any ID
        (default: the path).

        Returns None for a 404 when ``missing_ok`` (an instance deleted since it arrived); raises
        OrthancUnavailable with one sentence otherwise.
        """
        resp = self._request("GET", path, what or path, params=params, missing_ok=missing_ok)
        return None if resp is None else resp.json()

    def statistics(self) -> dict:
        return self._get("/statistics").json()

    def instance_file(self, orthanc_id: str) -> bytes:
        """The DICOM file Orthanc stores for an instance."""
        resp = self._get(f"/instances/{orthanc_id}/file")
        resp.raise_for_status()
        return resp.content

    def find_instances(self, sop_instance_uids: list[str], expected: Iterable[str] = ()) -> dict[str, int]:
        """{Orthanc instance ID: stored file size} of the instances Orthanc holds with these SOP Instance UIDs:
        one ``/tools/find`` for the whole list (DICOM list matching, UIDs joined by backslashes). ``expected``:
        Orthanc IDs the caller looks for, each asked for on its own if the answer may have been cut."""
        if not sop_instance_uids:
            return {}
        found = self._request("POST", "/tools/find", "/tools/find", json={
            "Level": "Instance", "Expand": True, "Query": {"SOPInstanceUID": "\\".join(sop_instance_uids)}}).json()
        sizes = {item["ID"]: int(item.get("FileSize") or -1) for item in found}
        if _may_be_cut(sizes):
            sizes.update({oid: size for oid in expected if oid not in sizes
                          for size in [self.instance_file_size(oid)] if size is not None})
        return sizes

    def instance_file_size(self, instance_id: str) -> int | None:
        """The stored file size of one instance (``GET /instances/{id}``), or None when Orthanc holds no such
        instance."""
        found = self.get_json(f"/instances/{instance_id}", "/instances/{id}", missing_ok=True)
        return None if found is None else int(found.get("FileSize") or -1)

    def find_series_instances(self, series_instance_uids: list[str],
                              expected: Iterable[str] = ()) -> dict[str, list[str]]:
        """{Orthanc series ID: its instance IDs} of the series Orthanc holds with these Series Instance UIDs,
        under any PatientID: one expanded ``/tools/find`` (list matching), ~2 ms per series on 1.10.1 against
        ~5 ms for one ``GET /series/{id}`` (measured, 100 series of 100 instances). The UIDs must hold no
        backslash (the list separator), ``*`` or ``?`` (wildcards). ``expected``: Orthanc series IDs the caller
        looks for, each asked for on its own if the answer may have been cut."""
        if not series_instance_uids:
            return {}
        found = self._request("POST", "/tools/find", "/tools/find", json={
            "Level": "Series", "Expand": True, "Query": {"SeriesInstanceUID": "\\".join(series_instance_uids)}}).json()
        lists = {item["ID"]: list(item.get("Instances") or []) for item in found}
        if _may_be_cut(lists):
            lists.update({sid: ids for sid in expected if sid not in lists
                          for ids in [self.series_instance_ids(sid)] if ids is not None})
        return lists

    def series_instance_ids(self, series_id: str) -> list[str] | None:
        """The IDs of a series' instances (``GET /series/{id}``, ~1-5 ms, nothing expanded), or None when Orthanc
        holds no such series."""
        found = self.get_json(f"/series/{series_id}", "/series/{id}", missing_ok=True)
        return None if found is None else list(found.get("Instances") or [])

    def series_dicom_size(self, series_id: str) -> tuple[int, int] | None:
        """(instances, the total size of their DICOM files as received) of a series, or None when Orthanc holds
        no such series or does not say: one ``GET /series/{id}/statistics``. Its ``DicomUncompressedSize`` (1.10.1,
        measured) is the sum of the ``FileSize`` that ``/tools/find`` shows per instance, with or without
        StorageCompression; other attachments (``dicom-until-pixel-data``, user ones) count only in
        ``UncompressedSize``."""
        stats = self.get_json(f"/series/{series_id}/statistics", "/series/{id}/statistics", missing_ok=True) or {}
        count, size = stats.get("CountInstances"), stats.get("DicomUncompressedSize")
        return None if count is None or size is None else (int(count), int(size))

    def find_patient_studies(self, patient_ids: list[str]) -> list[dict]:
        """The studies Orthanc holds under these PatientIDs, each as {'ID', 'PatientID', 'PatientName',
        'PatientBirthDate', 'PatientSex', 'StudyInstanceUID', 'Patient'}. Orthanc keeps each study's own copy of
        the patient tags, so two people merged under one ID show as two.

        One ``GET /patients/{id}/studies`` per PatientID (Orthanc's patient ID is computed here; a 404: none),
        not one ``/tools/find`` for all: a site's ``LimitFindResults`` cuts /tools/find answers short on 1.10.1
        with nothing to say so (docs/production.md), and a study left out could hide another person under the
        ID. Any ID is taken as itself (no wildcards)."""
        out = []
        for patient_id in dict.fromkeys(patient_ids):
            studies = self.get_json(f"/patients/{orthanc_patient_id(patient_id)}/studies", "/patients/{id}/studies",
                                    missing_ok=True) or []
            for study in studies:
                tags = study.get("PatientMainDicomTags") or {}
                if tags.get("PatientID") == patient_id:  # a SHA-1 collision is not this patient
                    out.append({**{k: tags.get(k, "") for k in ("PatientID", "PatientName", "PatientBirthDate",
                                                                 "PatientSex")},
                                "ID": study["ID"], "Patient": study.get("ParentPatient"),
                                "StudyInstanceUID": (study.get("MainDicomTags") or {}).get("StudyInstanceUID")})
        return out

    def study_instance_ids(self, study_id: str) -> list[str]:
        return [i["ID"] for i in self.get_json(f"/studies/{study_id}/instances", "/studies/{id}/instances")]

    def copy_instance_as(self, instance_id: str, replace: dict) -> str:
        """Store a copy of an instance with ``replace`` applied and its UIDs kept; returns the copy's ID.

        Orthanc 1.10.1 refuses to change PatientID by ``/studies/{id}/modify`` ("the parent PatientID cannot be
        manually modified"), but ``/instances/{id}/modify`` returns the modified file without storing it: it
        is posted back, one instance in memory at a time. The original stays until ``delete_study``."""
        data = self._request("POST", f"/instances/{instance_id}/modify", "/instances/{id}/modify", json={
            "Replace": replace, "Keep": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            "Force": True}).content
        answer = self._request("POST", "/instances", "/instances", data=data).json()
        return answer["ID"]

    def delete_study(self, study_id: str) -> None:
        self._request("DELETE", f"/studies/{study_id}", "DELETE /studies/{id}", missing_ok=True)

    def find_instance_ids(self, sop_instance_uids: list[str], expected: Iterable[str] = ()) -> set[str]:
        """Orthanc IDs of the instances with these SOP Instance UIDs (``expected``: as ``find_instances``). Keep
        lists to ~100: Orthanc 1.10.1 matches the list one by one, so its cost grows faster than the list
        (docs/speed.md)."""
        return set(self.find_instances(sop_instance_uids, expected))

    def instance_ids(self, page: int = 10_000):
        """Every instance ID Orthanc holds, a page at a time (``GET /instances?since=&limit=``). Listing costs
        ~4 us per instance against ~0.3 ms to find one by UID (20,000 instances, 1.10.1). Not a snapshot: an
        instance deleted meanwhile shifts the pages, so an ID missing here may still be there."""
        since = 0
        while True:
            ids = self.get_json("/instances", "/instances (the instance list)", params={"since": since, "limit": page})
            if ids:
                yield ids
            if len(ids) < page:
                return
            since += len(ids)

    def instance_slice(self, start: int, stop: int, page: int = 50_000) -> list[str]:
        """The instance IDs at offsets [start, stop) of Orthanc's list (in the order instances arrived), a page
        at a time: one night's share of a full sweep spread over nights (pipeline/orthanc_sweep.py). Pages of
        50,000 (~2.3 MB of JSON): 200,000 IDs took 2.4 s so, 2.9 s in pages of 10,000 (1.10.1)."""
        out: list[str] = []
        while start + len(out) < stop:
            ids = self.get_json("/instances", "/instances (the instance list)",
                                params={"since": start + len(out), "limit": min(page, stop - start - len(out))})
            out += ids
            if not ids:
                break
        return out

    def held_instance_ids(self, page: int = 10_000, tries: int = 3) -> tuple[set[str], tuple[int, int] | None]:
        """Every instance ID Orthanc holds, and, when that set is exact (a snapshot), its mark: Orthanc's
        (instance count, last change Seq) while it was read.

        The pages are offsets into Orthanc's table, so an instance deleted meanwhile shifts them and hides
        another. Orthanc 1.10.1 logs no change for a deletion (it even erases the instance's ``NewInstance``),
        so the listing is bracketed instead: the instance count and the last change's Seq, before and after.
        Unchanged, and the count equal to the IDs listed, means no instance came or went for good while
        listing: the set is exact. Otherwise it is listed again, up to ``tries`` times, then returned without
        a mark (an ID missing from it may still be there)."""
        held: set[str] = set()
        for _ in range(tries):
            before = self.listing_mark()
            held = set()
            for ids in self.instance_ids(page):
                held.update(ids)
            if before == self.listing_mark() and before[0] == len(held):
                return held, before
        return held, None

    def listing_mark(self) -> tuple[int, int]:
        """(instance count, last change Seq): two cheap reads of Orthanc's index."""
        count = int(self.get_json("/statistics").get("CountInstances") or 0)
        last = self.get_json("/changes", "/changes", {"last": ""}).get("Last")
        return count, int(last or 0)

    def stored_md5(self, orthanc_id: str) -> str | None:
        """The MD5 of the DICOM file Orthanc holds for an instance, as Orthanc recorded it on arrival (of the
        uncompressed bytes), or None when it keeps none (``StoreMD5ForAttachments: false``)."""
        resp = self._request("GET", f"/instances/{orthanc_id}/attachments/dicom/md5", "the stored file's MD5")
        return resp.text.strip() or None
