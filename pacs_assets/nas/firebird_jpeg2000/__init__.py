"""The ``firebird_jpeg2000`` NAS kind: a Firebird catalog (patients/studies/series/images) plus JPEG 2000 files.

A file's procedure date is in the catalog, not in the file, so the folder watch cannot date a new file
(``read_dates`` is None, so ``has_folders`` is False): the sensor asks for the range of dates the NAS spans.
Its extra check decodes images back from Orthanc and compares them with the source JPEG 2000 pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Callable

from pacs_assets.nas.base import KindCheck, NasKind
from pacs_assets.nas.firebird_jpeg2000.settings import FirebirdJpeg2000Nas

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"  # the transfer syntax the kind's files are sent as


def _source(nas: FirebirdJpeg2000Nas):
    from pacs_assets.nas.firebird_jpeg2000.source import (
        FirebirdJpeg2000Source,  # fdb loads only when needed
    )

    return FirebirdJpeg2000Source(nas.id, nas.root, catalog=nas.firebird, mapping=nas.mapping,
                                  settle_seconds=nas.settle_seconds)


def lossless_in_orthanc(nas: FirebirdJpeg2000Nas, stored_files: Callable[[str, str, int], list[tuple[str, str]]],
                        client) -> tuple[bool, dict]:
    """Images fetched back from Orthanc decode pixel for pixel equal to the source JP2 (a sample, or all)."""
    from pacs_assets.nas.firebird_jpeg2000.dicom_wrap import verify_lossless

    compared = differ = 0
    for file_path, orthanc_id in stored_files("JP2", JPEG2000_LOSSLESS, nas.lossless_check_sample):
        equal, _why = verify_lossless(client.instance_file(orthanc_id), nas.root / file_path)
        compared += 1
        differ += not equal
    return differ == 0, {"compared": compared, "differ": differ}


KIND = NasKind(
    name="firebird_jpeg2000", settings=FirebirdJpeg2000Nas, build_source=_source, read_dates=None,
    checks=(KindCheck(name="lossless_in_orthanc", on="orthanc_instances", run=lossless_in_orthanc,
                      description="Decodes images back from Orthanc and compares them pixel for pixel with the "
                                  "source JPEG 2000 files (nas.lossless_check_sample per evaluation; 0 = all)."),))
